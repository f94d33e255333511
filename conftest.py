# The root conftest stays empty of plugin imports: pytest-seqdrift registers itself
# through its pytest11 entry point, and importing it here would register it twice.
