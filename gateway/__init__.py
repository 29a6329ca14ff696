"""The S3 front end (aiohttp); see DESIGN.md."""
