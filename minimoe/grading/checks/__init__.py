"""Every chapter's checks; importing this package registers them all."""

from minimoe.grading.checks import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10  # noqa: F401
