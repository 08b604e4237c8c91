# Native memory of tiny vs small, side by side (results/native/tiny_native.md). Export first:
#   python -m edgecomp export all-minilm-l6-v2 --target android --recipe tiny -o /tmp/tinyn
#   python -m edgecomp export all-minilm-l6-v2 --target android --recipe small -o /tmp/smalln --no-bench
# --option replaces the manifest session options, so the .ort rows restate the shipped keys.
P="python -m edgecomp.bench.native"
ORT="--option session.use_memory_mapped_ort_model=1 --option session.use_ort_model_bytes_directly=1 --option session.use_ort_model_bytes_for_initializers=1"
for i in 1 2 3; do
 for d in tinyn smalln; do
  for f in model.ort model.onnx; do echo "$d $f shipped $($P /tmp/$d/$f --runs 10)"; done
 done
 echo "tinyn model.ort arena-off $($P /tmp/tinyn/model.ort $ORT --option arena=0 --runs 10)"
 echo "tinyn model.ort prepack-off $($P /tmp/tinyn/model.ort $ORT --option session.disable_prepacking=1 --runs 10)"
 echo "tinyn model.onnx arena-off $($P /tmp/tinyn/model.onnx --option arena=0 --runs 10)"
 echo "tinyn model.onnx prepack-off $($P /tmp/tinyn/model.onnx --option session.disable_prepacking=1 --runs 10)"
done
