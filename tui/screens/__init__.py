"""The app's screens: registry (opens first), training, compare, and small dialogs."""
