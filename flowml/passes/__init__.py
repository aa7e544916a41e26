"""IR → IR transforms."""
