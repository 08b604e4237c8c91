"""Graph passes after lowering: simplify, quantize, convert to the ORT mobile format."""
