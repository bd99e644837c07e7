"""Tests of mimicry.models."""
