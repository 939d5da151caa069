from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command

from llmproxy.core.commands import OpsCommand


class Command(OpsCommand):
    help = (
        "First-run setup for local use: migrate (which adds the shipped prices), create an "
        "admin user once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="printed admin URL")

    def handle(self, *args, **options):
        # billing's post_migrate handler inserts the shipped price rows that are missing.
        call_command("migrate", interactive=False, verbosity=0)
        users = get_user_model().objects
        admin_url = f"{options['url'].rstrip('/')}/admin/"
        if users.filter(is_superuser=True).exists():
            self.stdout.write(f"Admin: {admin_url} (admin user exists; password not shown again)")
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser(options["username"], email="", password=password)
        self.stdout.write(f"Admin: {admin_url}")
        self.stdout.write(f"Login: {options['username']} / {password}  (shown once; keep it)")
