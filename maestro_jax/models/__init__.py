"""Towers, heads and the composed SpeechTextModel."""
