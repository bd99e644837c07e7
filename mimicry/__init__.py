"""mimicry: train, serve and audit explainable chest X-ray classifiers.

The core library (this package) is pure: no web server, no database. ``training``, ``serving`` and
``audit`` build on it; the ``mimicry`` console script (:mod:`mimicry_cli`, outside this package) composes
them.
"""

__version__ = "0.1.0"
