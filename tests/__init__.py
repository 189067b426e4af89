"""Tests for sesscache."""
