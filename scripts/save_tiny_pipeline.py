"""Save stylevid's tiny random SD-architecture pipeline as a diffusers directory.

    python scripts/save_tiny_pipeline.py outputs/tiny-sd [--seed 0]

Any diffusers tool then loads the same weights (`StableDiffusionPipeline.from_pretrained(dir)`), and
stylevid takes them with `model.path=outputs/tiny-sd`.
"""

import argparse

from stylevid.models.tiny import save_tiny_pipeline

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_tiny_pipeline(args.directory, seed=args.seed))
