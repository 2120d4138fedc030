"""What every layer shares, kept at the bottom so that collection needs nothing above it: typed
errors, atomic files, checksums and the overwrite guard, videos and contact sheets, config checks."""
