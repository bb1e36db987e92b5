"""Django 5 (psycopg 3) workload over the migrated `users` and `orders` tables; prints one JSON line per
observation. Run directly and through pgshift and compare: the ORM must see exactly the same."""
import json
import sys
from decimal import Decimal
from urllib.parse import urlparse

import django
from django.conf import settings

url = urlparse(sys.argv[1])
settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.path.lstrip("/"),
            "USER": url.username,
            "HOST": url.hostname,
            "PORT": url.port,
        }
    },
    INSTALLED_APPS=[],
    USE_TZ=True,
    TIME_ZONE="UTC",
)
django.setup()

from django.db import models, transaction  # noqa: E402
from django.db.models import F  # noqa: E402


class User(models.Model):
    id = models.BigAutoField(primary_key=True)
    fullname = models.TextField()
    email = models.TextField(unique=True, null=True)
    qty = models.IntegerField(default=0)

    class Meta:
        app_label = "shop"
        db_table = "users"
        managed = False


class Order(models.Model):
    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="orders")
    legacy_status = models.TextField(null=True, default="open")
    amount = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))

    class Meta:
        app_label = "shop"
        db_table = "orders"
        managed = False


def emit(name, value):
    print(json.dumps([name, value], default=str), flush=True)


def users():
    return [[u.id, u.fullname, u.email, u.qty] for u in User.objects.order_by("id")]


ada = User.objects.create(fullname="Ada", email="ada@x")
emit("create", [ada.id, ada.fullname, ada.qty])
many = User.objects.bulk_create([User(fullname=f"bulk {i}", email=f"b{i}@x", qty=i) for i in range(4)])
emit("bulk_create", [u.id for u in many])
ada.fullname = "Ada Lovelace"
ada.save()
emit("update", users()[0])
emit("bulk_update", User.objects.filter(qty__gte=2).update(qty=F("qty") + 10))
for u in many:
    u.fullname = u.fullname.upper()
User.objects.bulk_update(many, ["fullname"])
emit("bulk_update_objects", users())
obj, created = User.objects.update_or_create(email="ada@x", defaults={"fullname": "Ada (upsert)"})
emit("update_or_create", [obj.id, obj.fullname, created])
obj, created = User.objects.get_or_create(email="grace@x", defaults={"fullname": "Grace"})
emit("get_or_create", [obj.id, obj.fullname, created])
obj, created = User.objects.get_or_create(email="grace@x", defaults={"fullname": "Grace"})
emit("get_or_create_again", [obj.id, created])
Order.objects.create(user=ada, legacy_status="paid", amount=Decimal("12.50"))
Order.objects.create(user=ada, amount=Decimal("3.00"))
Order.objects.bulk_create([Order(user=obj, legacy_status="shipped"), Order(user=None)])
emit(
    "relationships",
    [[u.id, [[o.id, o.legacy_status, o.amount] for o in u.orders.order_by("id")]]
     for u in User.objects.prefetch_related("orders").order_by("id")],
)
emit("select_related", [[o.id, o.user.fullname if o.user else None] for o in Order.objects.select_related("user").order_by("id")])
try:
    with transaction.atomic():
        User.objects.create(fullname="kept", email="kept@x")
        try:
            with transaction.atomic():
                User.objects.create(fullname="ghost", email="ada@x")
        except django.db.IntegrityError:
            emit("savepoint", "rolled back")
except Exception as e:  # noqa: BLE001
    emit("transaction_error", type(e).__name__)
with transaction.atomic():
    locked = User.objects.select_for_update(no_key=True).get(email="kept@x")
    locked.qty = 7
    locked.save(update_fields=["qty"])
emit("select_for_update", users()[-1])
many[0].delete()
Order.objects.filter(legacy_status="paid").update(legacy_status="refunded")
emit("after_delete", users())
emit("orders", [[o.id, o.user_id, o.legacy_status, o.amount] for o in Order.objects.order_by("id")])
emit("count", User.objects.count())
