"""orchard.review: human review on Argilla, and reviewers' work back into training data."""
