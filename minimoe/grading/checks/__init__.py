"""Every chapter's checks; importing this package registers them all."""

from minimoe.grading.checks import ch00  # noqa: F401
