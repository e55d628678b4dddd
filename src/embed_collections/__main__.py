"""Allow `python -m embed_collections`."""

from embed_collections.cli.main import main

if __name__ == "__main__":
    main()
