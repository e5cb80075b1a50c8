"""The bridge from the protocol to the in-process runtime: engine options and the shared
engines of this process, used by the `local` backend and by `sgl serve`."""
