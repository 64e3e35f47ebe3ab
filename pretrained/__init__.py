"""Registry of published generators (shipped in the wheel as mtlue_cli.pretrained); see README.md here."""
