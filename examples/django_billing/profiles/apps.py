from django.apps import AppConfig


class ProfilesConfig(AppConfig):
    name = "profiles"
    label = "profile"  # tables profile_address, profile_billingaddress, profile_profile
