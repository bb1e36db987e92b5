"""SQLAlchemy 2 (psycopg 3) workload over the migrated `users` and `orders` tables; prints one JSON line per
observation. Run directly and through pgshift and compare: the ORM must see exactly the same."""
import json
import sys
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Numeric, String, create_engine, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

url = sys.argv[1].replace("postgres://", "postgresql+psycopg://", 1)


def emit(name, value):
    print(json.dumps([name, value], default=str), flush=True)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    fullname: Mapped[str] = mapped_column(String)
    email: Mapped[str | None] = mapped_column(String, unique=True)
    qty: Mapped[int] = mapped_column(server_default="0")
    orders: Mapped[list["Order"]] = relationship(back_populates="user", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    legacy_status: Mapped[str | None] = mapped_column(String, server_default="open")
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), server_default="0")
    user: Mapped[User | None] = relationship(back_populates="orders")


def users(session):
    return [(u.id, u.fullname, u.email, u.qty) for u in session.scalars(select(User).order_by(User.id))]


engine = create_engine(url)
with Session(engine) as s:
    # create
    ada = User(fullname="Ada", email="ada@x")
    s.add(ada)
    s.commit()
    emit("create", [ada.id, ada.fullname, ada.qty])
    # bulk create: SQLAlchemy's insertmanyvalues (INSERT ... SELECT ... FROM (VALUES ...) ... RETURNING)
    many = [User(fullname=f"bulk {i}", email=f"b{i}@x", qty=i) for i in range(4)]
    s.add_all(many)
    s.commit()
    emit("bulk_create", [u.id for u in many])
    # update of one object (optimistic: SQLAlchemy checks the row count)
    ada.fullname = "Ada Lovelace"
    s.commit()
    emit("update", users(s)[0])
    # bulk update
    res = s.execute(update(User).where(User.qty >= 2).values(qty=User.qty + 10))
    s.commit()
    emit("bulk_update", res.rowcount)
    # upsert
    stmt = insert(User).values(id=ada.id, fullname="Ada (upsert)", email="ada@x")
    stmt = stmt.on_conflict_do_update(index_elements=[User.id], set_={"fullname": stmt.excluded.fullname})
    s.execute(stmt)
    s.commit()
    s.expire_all()
    emit("upsert", users(s)[0])
    # get or create
    found = s.scalars(select(User).where(User.email == "grace@x")).first()
    if found is None:
        found = User(fullname="Grace", email="grace@x")
        s.add(found)
        s.commit()
    emit("get_or_create", [found.id, found.fullname])
    # relationships: orders through the relationship, loaded back with selectinload
    ada.orders.append(Order(legacy_status="paid", amount=Decimal("12.50")))
    ada.orders.append(Order(amount=Decimal("3.00")))
    found.orders.append(Order(legacy_status="shipped"))
    s.commit()
    s.expire_all()
    loaded = s.scalars(select(User).options(selectinload(User.orders)).order_by(User.id)).all()
    emit("relationships", [[u.id, [(o.id, o.legacy_status, str(o.amount)) for o in u.orders]] for u in loaded])
    # savepoint rolled back, then one kept
    nested = s.begin_nested()
    s.add(User(fullname="ghost", email="ghost@x"))
    s.flush()
    nested.rollback()
    with s.begin_nested():
        s.add(User(fullname="kept", email="kept@x"))
    s.commit()
    emit("savepoints", [u[1] for u in users(s)])
    # delete
    s.delete(many[0])
    s.commit()
    order = s.scalars(select(Order).order_by(Order.id)).first()
    order.legacy_status = "refunded"
    s.commit()
    emit("after_delete", users(s))
    emit("orders", [(o.id, o.user_id, o.legacy_status, str(o.amount)) for o in s.scalars(select(Order).order_by(Order.id))])
    emit("count", s.scalar(select(func.count()).select_from(User)))
