"""The bridge from the protocol to the in-process runtime, used by the `local` backend and by
`sgl serve`: `engine.BridgedEngine` drives a loaded engine in protocol terms (`render`: prompts
to token ids, `healing`: token healing, `sampling`: requests to sampling parameters);
`registry` holds this process's shared engines; `options` the engine options a run may set.
The runtime is imported lazily: importing the bridge does not import torch."""
