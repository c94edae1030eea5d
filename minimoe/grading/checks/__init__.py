"""Every chapter's checks; importing this package registers them all."""

from minimoe.grading.checks import ch00, ch01  # noqa: F401
