"""What the hostile-upstream tests share: the secret that must never leak."""

SECRET = "hostile-test-secret-0xBAD5EED"
