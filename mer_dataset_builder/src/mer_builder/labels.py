"""The unified 7-class label space."""

EMOTIONS_7 = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
