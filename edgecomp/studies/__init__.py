"""Measurement protocols shared by the studies in scripts/ (development data from ``shared_data_dir()``).

The CLI never imports these; they live in the package so the scripts stay front-ends and measure what
edgecomp ships: models lower through edgecomp.lower, edgecomp.optimize and edgecomp.runtime, as exports do.
"""
