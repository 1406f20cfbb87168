//! The Lua scripts behind every operation of the Redis backend: each write is one script, so it is
//! atomic on the shard that owns its table (conditional writes included), and each multi-key command
//! is one round trip.
//!
//! Every script gets four keys of one table ([`super::TableKeys`]), in this order:
//! `KEYS[1]` the hash of encoded values, `KEYS[2]` the hash of versions (decimal strings),
//! `KEYS[3]` the sorted set of key names (all scored 0, so ordered by name, for paging), `KEYS[4]` the
//! table's version counter. Scripts that write get a fifth, `KEYS[5]`: the table's recent calls, a
//! sorted set of call ids scored by when each is forgotten (Redis's clock in ms, [`REMEMBERED_MS`]
//! after the write), and their call's own id as `ARGV[1]` (their other arguments follow it). A write
//! adds its id once it is made and drops the ids whose time is up. redis-rs sends a command again when
//! the connection it went on broke, even if Redis had already run it; the second run then finds its id
//! and answers `{2}` ([`REPEATED`]) instead of writing twice (or finding its own version and calling
//! that a conflict). Only the id is kept, not the answer: answers hold the values writes replaced, and
//! keeping them would weigh on Redis's memory just when it is short.
//!
//! The ids live in one key of the table's, not in a key per call: a slot that is being moved to
//! another node (`CLUSTER SETSLOT … MIGRATING`) runs a script only if every key it names is still
//! there (else `TRYAGAIN`, until the move ends), and a key made by the call itself never is. So with a
//! key per call, every write to every table of a slot being moved waited for the whole move, which
//! took seconds for a busy slot (made larger by those very keys). The set is never emptied by a write
//! (the id just added stays), so a table once written keeps it, beside its counter.
//!
//! Versions are decimal strings end to end: Lua's numbers are doubles, exact to 2^53, which versions
//! stay below (they count up from the clock in µs); an expected version from a client is compared as a
//! string, so that a huge one can never match by rounding.
//!
//! Scripts that write carry no shebang: Redis then checks the memory limit at their first write
//! command (before anything is written, so a refused write changes nothing), and deletes, which are
//! not refused under memory pressure, still run. Reading scripts are flagged `no-writes`, so that they
//! run when Redis is out of memory, and on replicas.

use std::sync::LazyLock;

/// A script and its SHA-1, by which it is called (`EVALSHA`) once Redis has it cached.
pub struct Lua {
    pub code: String,
    pub hash: String,
}

impl Lua {
    fn new(code: &str) -> Self {
        Lua { code: code.to_owned(), hash: redis::Script::new(code).get_hash().to_owned() }
    }
}

/// How long a write call is remembered in Redis, for a repeat of the same call: longer than redis-rs
/// goes on sending a command again (bounded by `--redis-timeout`, 2 s by default, and with
/// `--redis-wait` by it and `--redis-wait-timeout`).
pub const REMEMBERED_MS: u64 = 10_000;

/// What a write call answers when it finds it was run before.
pub const REPEATED: i64 = 2;

/// What every script may use: a key's version and value, read together.
const ENTRY: &str = r"
-- The key's version ('0' when absent) and value (false when absent).
local function entry(key)
  local version = redis.call('HGET', KEYS[2], key)
  if not version then return '0', false end
  return version, redis.call('HGET', KEYS[1], key)
end
";

/// What every writing script starts with, after [`ENTRY`]: a call seen before (and not yet forgotten)
/// answers [`REPEATED`] (`remember` marks the call as run, after the write, so that the first command
/// that writes is still the write's own: see the module's comment on memory); the table's next
/// version, above the last one handed out and at least Redis's clock in µs, so that a version is never
/// handed out twice, even when the counter was lost (a failover that dropped its last increments, a
/// table dropped and created again) as long as Redis's clock does not go back; and storing and
/// removing a key in all three structures.
fn write_prelude() -> String {
    format!(
        r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local call = ARGV[1]
local seen = redis.call('ZSCORE', KEYS[5], call)
if seen and tonumber(seen) > now_ms then return {{{REPEATED}}} end
local function remember(reply)
  redis.call('ZADD', KEYS[5], now_ms + {REMEMBERED_MS}, call)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms)
  return reply
end
local function next_version()
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('GET', KEYS[4]) or '0')
  local version = string.format('%.0f', math.max(last + 1, floor))
  redis.call('SET', KEYS[4], version)
  return version
end
-- Writes the key; its new version.
local function store(key, value)
  local version = next_version()
  redis.call('HSET', KEYS[1], key, value)
  redis.call('HSET', KEYS[2], key, version)
  redis.call('ZADD', KEYS[3], 0, key)
  return version
end
local function unlink(key)
  redis.call('HDEL', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
  redis.call('ZREM', KEYS[3], key)
end
"
    )
}

/// A script that writes: no shebang (see the module's comment), [`ENTRY`], [`write_prelude`], `body`.
fn writing(body: &str) -> Lua {
    Lua::new(&format!("{ENTRY}{}{body}", write_prelude()))
}

/// A script that only reads: flagged `no-writes`, [`ENTRY`], `body`.
fn reading(body: &str) -> Lua {
    Lua::new(&format!("#!lua flags=no-writes\n{ENTRY}{body}"))
}

/// ARGV: the call's id, key, encoded value, expected version ('' for none).
/// Returns `{1, previous version or '0', previous value or nil, new version}` when written, or
/// `{0, current version or '0', current value or nil}` on a conflict.
pub static SET: LazyLock<Lua> = LazyLock::new(|| {
    writing(
        r"
local key, value, expected = ARGV[2], ARGV[3], ARGV[4]
local current, previous = entry(key)
if expected ~= '' and expected ~= current then
  return {0, current, previous}
end
return remember({1, current, previous, store(key, value)})
",
    )
});

/// ARGV: the call's id, key, value, key, value, ... Returns, per pair, `previous value or nil, previous version or
/// '0', new version`.
pub static SET_MANY: LazyLock<Lua> = LazyLock::new(|| {
    writing(
        r"
local reply = {}
for i = 2, #ARGV, 2 do
  local current, previous = entry(ARGV[i])
  reply[#reply + 1] = previous
  reply[#reply + 1] = current
  reply[#reply + 1] = store(ARGV[i], ARGV[i + 1])
end
return remember(reply)
",
    )
});

/// ARGV: the call's id, key, expected version ('' for none). Returns `{written (1 or 0), version before or '0',
/// value before or nil}`.
pub static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    writing(
        r"
local key, expected = ARGV[2], ARGV[3]
local current, value = entry(key)
if expected ~= '' and expected ~= current then
  return {0, current, value}
end
if current == '0' then
  -- Nothing to delete: nothing written, and nothing to remember (a repeat changes nothing either),
  -- so that it runs when Redis is full, whose first write command would be refused.
  return {1, current, value}
end
unlink(key)
return remember({1, current, value})
",
    )
});

/// ARGV: the call's id, keys. Returns, per key, `value before or nil, version before or '0'` (a key
/// named twice is found deleted the second time, as by two deletes). Every key is read before the
/// table is written, and each of the table's three structures is written once, by one command naming
/// all the keys deleted: a table the call empties is gone from Redis then, and on a slot being moved to
/// another node Redis stops a script that names a key that is not there ("a non local key"), after
/// what it had written (with a delete per key, the reads after the one that emptied the table failed,
/// and a call that deleted was answered as failed). At most `KEYS_PER_CALL` keys, well within what
/// `unpack` can pass.
pub static DELETE_MANY: LazyLock<Lua> = LazyLock::new(|| {
    writing(
        r"
local reply, doomed, seen = {}, {}, {}
for i = 2, #ARGV do
  local key = ARGV[i]
  local current, value = '0', false
  if not seen[key] then
    seen[key] = true
    current, value = entry(key)
    if current ~= '0' then doomed[#doomed + 1] = key end
  end
  reply[#reply + 1] = value
  reply[#reply + 1] = current
end
-- As Delete: only a call that deleted something is remembered.
if #doomed == 0 then return reply end
redis.call('HDEL', KEYS[1], unpack(doomed))
redis.call('HDEL', KEYS[2], unpack(doomed))
redis.call('ZREM', KEYS[3], unpack(doomed))
return remember(reply)
",
    )
});

/// ARGV: keys. Returns, per key, `value or nil, version or '0'`: a value and its version read together.
pub static GET_MANY: LazyLock<Lua> = LazyLock::new(|| {
    reading(
        r"
local reply = {}
for i = 1, #ARGV do
  local version, value = entry(ARGV[i])
  reply[#reply + 1] = value
  reply[#reply + 1] = version
end
return reply
",
    )
});

/// SPUBLISH of ARGV[1], a shard channel, with ARGV[2]; returns SPUBLISH's count. It names no key, and
/// runs where it is sent (a node that does not serve the channel's slot refuses it: "a non local
/// key"), including a master whose slot is being moved. Flagged, so that it counts as a writing
/// script (no `no-writes`) that a replica refuses (READONLY) where it would take SPUBLISH itself, for
/// its own subscribers only, and `allow-oom`, so that it runs when Redis is out of memory, as
/// SPUBLISH does. See `Connection::publish`.
pub static SHARD_PUBLISH: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("#!lua flags=allow-oom\nreturn redis.call('SPUBLISH', ARGV[1], ARGV[2])"));

/// One page of a scan, by key name. ARGV: '1' and the last key of the previous page, or '0' and ''
/// to start; the most entries (at least one is taken); the byte limit (key and value lengths; the page
/// stops once it is reached, after at least one entry). Returns `{done (1 or 0), the last name read
/// (where the next page starts after), key, value, version, key, value, version, ...}`.
pub static SCAN_PAGE: LazyLock<Lua> = LazyLock::new(|| {
    reading(
        r"
local start = '-'
if ARGV[1] == '1' then start = '(' .. ARGV[2] end
local count = math.max(tonumber(ARGV[3]), 1)
local max_bytes = tonumber(ARGV[4])
local names = redis.call('ZRANGE', KEYS[3], start, '+', 'BYLEX', 'LIMIT', 0, count + 1)
local reply = {0, false}
local bytes, taken = 0, 0
for i = 1, math.min(#names, count) do
  if taken > 0 and bytes >= max_bytes then break end
  local name = names[i]
  local version, value = entry(name)
  if value then
    reply[#reply + 1] = name
    reply[#reply + 1] = value
    reply[#reply + 1] = version
    bytes = bytes + #name + #value
  end
  taken = i
  reply[2] = name
end
if taken == #names then reply[1] = 1 end
return reply
",
    )
});
