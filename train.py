"""Train an embedder: `python train.py [experiment=NAME] [key=value ...]` (see conf/train.yaml)."""

from lookalike.cli.train import main

if __name__ == "__main__":
    main()
