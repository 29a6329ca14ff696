"""The FUSE front end (trio + pyfuse3); see DESIGN.md."""
