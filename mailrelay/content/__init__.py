"""What a message says: HTML sanitizing, its text alternative, and which attachments are refused."""
