// Sequelize 6 (node-postgres) workload over the migrated `users` and `orders` tables; prints one JSON line per
// observation. Run directly and through pgshift and compare: the ORM must see exactly the same.
const { Sequelize, DataTypes, Op } = require('sequelize');

const url = process.argv[2];
const emit = (name, value) => console.log(JSON.stringify([name, value]));

async function main() {
  const sequelize = new Sequelize(url, { logging: false, dialect: 'postgres' });
  const User = sequelize.define('User', {
    id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
    fullname: { type: DataTypes.TEXT, allowNull: false },
    email: { type: DataTypes.TEXT, unique: true },
    qty: { type: DataTypes.INTEGER, defaultValue: 0 },
  }, { tableName: 'users', timestamps: false });
  const Order = sequelize.define('Order', {
    id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
    legacy_status: { type: DataTypes.TEXT },
    amount: { type: DataTypes.DECIMAL(10, 2), defaultValue: '0' },
  }, { tableName: 'orders', timestamps: false });
  User.hasMany(Order, { foreignKey: 'user_id', as: 'orders' });
  Order.belongsTo(User, { foreignKey: 'user_id', as: 'user' });
  const users = async () => (await User.findAll({ order: [['id', 'ASC']], raw: true }))
    .map((u) => [String(u.id), u.fullname, u.email, u.qty]);

  const ada = await User.create({ fullname: 'Ada', email: 'ada@x' });
  emit('create', [String(ada.id), ada.fullname]);
  const many = await User.bulkCreate([0, 1, 2, 3].map((i) => ({ fullname: `bulk ${i}`, email: `b${i}@x`, qty: i })));
  emit('bulk_create', many.map((u) => String(u.id)));
  ada.fullname = 'Ada Lovelace';
  await ada.save();
  emit('update', (await users())[0]);
  const [count] = await User.update({ qty: sequelize.literal('qty + 10') }, { where: { qty: { [Op.gte]: 2 } } });
  emit('bulk_update', count);
  // Model.upsert: INSERT … ON CONFLICT ("id") DO UPDATE SET "id" = EXCLUDED."id", … RETURNING …
  const [upserted] = await User.upsert({ id: ada.id, fullname: 'Ada (upsert)', email: 'ada@x', qty: 1 });
  emit('upsert', [String(upserted.id), upserted.fullname]);
  // get-or-create as find, then create (findOrCreate runs a function body pgshift refuses; tested apart)
  let grace = await User.findOne({ where: { email: 'grace@x' } });
  if (!grace) grace = await User.create({ fullname: 'Grace', email: 'grace@x' });
  emit('get_or_create', [String(grace.id), grace.fullname]);
  await Order.create({ user_id: ada.id, legacy_status: 'paid', amount: '12.50' });
  await Order.create({ user_id: ada.id, amount: '3.00' });
  await Order.bulkCreate([{ user_id: grace.id, legacy_status: 'shipped' }, { user_id: null }]);
  const loaded = await User.findAll({ include: [{ model: Order, as: 'orders' }], order: [['id', 'ASC'], [{ model: Order, as: 'orders' }, 'id', 'ASC']] });
  emit('relationships', loaded.map((u) => [String(u.id), u.orders.map((o) => [String(o.id), o.legacy_status, o.amount])]));
  await sequelize.transaction(async (t) => {
    await User.create({ fullname: 'kept', email: 'kept@x' }, { transaction: t });
    try {
      await sequelize.transaction({ transaction: t }, async (t2) => {
        await User.create({ fullname: 'ghost', email: 'ada@x' }, { transaction: t2 });
      });
    } catch (e) {
      emit('savepoint', e.name);
    }
  });
  await many[0].destroy();
  await Order.update({ legacy_status: 'refunded' }, { where: { legacy_status: 'paid' } });
  emit('after_delete', await users());
  emit('orders', (await Order.findAll({ order: [['id', 'ASC']], raw: true })).map((o) => [String(o.id), o.user_id && String(o.user_id), o.legacy_status, o.amount]));
  emit('count', await User.count());
  // findOrCreate wraps its INSERT in a function body: through pgshift that is refused while writes are
  // mirrored (directly it works); either way the ORM must not end up with a half-written row.
  try {
    const [row, created] = await User.findOrCreate({ where: { email: 'foc@x' }, defaults: { fullname: 'FoC' } });
    emit('find_or_create', ['ok', created, row.fullname]);
  } catch (e) {
    emit('find_or_create', ['error', e.parent && e.parent.code]);
  }
  emit('find_or_create_rows', await User.count({ where: { email: 'foc@x' } }));
  await sequelize.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
