"""The dispatcher's peers: other ways to send the same notifications, in the same harness."""
