"""Fill the daily rollups from the usage rows that exist (they were written before the
writer kept the rollups). Rows already rolled up are not counted twice: the rollup table is
new and empty when this runs."""

from django.db import migrations

from billing.rollups import from_events_sql


def backfill(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute(from_events_sql(connection.vendor, "1 = 1"))


def empty(apps, schema_editor):
    apps.get_model("billing", "UsageDaily").objects.using(schema_editor.connection.alias).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0010_usage_daily_rollup")]

    operations = [migrations.RunPython(backfill, empty)]
