"""Extract pooled embeddings of frozen Hugging Face encoders into a feature store: see
`python extract_at_features_hf.py --help`."""

from mer.cli.extract_hf import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
