"""The Redis store's Lua scripts: each runs atomically on the server, on the server's clock
(``TIME``) unless the caller passes ``now`` (tests) as ``ARGV[1]``. Numbers go back to Python as
strings (Redis would truncate Lua numbers to integers)."""

from __future__ import annotations

from .models import ARRIVAL_JITTER, SHORTEST_WINDOW, WINDOW_GUARD

_COMMON = r"""
local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
-- Drop the entries whose lease ran out: ``zset`` holds each id's expiry, ``hash`` its data
-- (slots and their holders, waiting holders and since when, reservations and their credits).
local function purge(zset, hash, now)
  local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
    redis.call('HDEL', hash, unpack(dead))
  end
end
-- The civil date of a day number (days since 1970-01-01), by H. Hinnant's algorithm.
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local function period_key(period, now)
  if period == 'total' then return 'total' end
  local y, m, d = civil(math.floor(now / 86400))
  if period == 'day' then return string.format('%04d-%02d-%02d', y, m, d) end
  return string.format('%04d-%02d', y, m)
end
-- Roll a budget into the current period; returns spent, key.
local function roll(budget, now)
  local b = redis.call('HMGET', budget, 'period', 'key', 'spent')
  local key = period_key(b[1], now)
  if key ~= b[2] then
    redis.call('HSET', budget, 'key', key, 'spent', '0')
    return 0, key
  end
  return tonumber(b[3]) or 0, key
end
local function reserved(data)
  local total, count = 0, 0
  for _, v in ipairs(redis.call('HVALS', data)) do
    total = total + tonumber(cjson.decode(v)['c'])
    count = count + 1
  end
  return total, count
end
"""

# The rate scripts' constants, and their window guard (models.window_guard).
_WINDOW = (
    f"local ARRIVAL_JITTER, WINDOW_GUARD = {ARRIVAL_JITTER!r}, {WINDOW_GUARD!r}\n"
    + f"local SHORTEST_WINDOW = {SHORTEST_WINDOW!r}\n"
    + r"""
local function window_guard(learned)
  if not learned or learned <= 0 then return WINDOW_GUARD end
  return math.min(WINDOW_GUARD, math.max(learned, SHORTEST_WINDOW) / 10)
end
"""
)

# KEYS: rate ; ARGV: now, default_limit, default_window, margin, burst, count, ahead
# -> number of slots (0: not yet), wait, now, slot... (as state.take_request, window count included)
TAKE_REQUEST = (
    _COMMON
    + _WINDOW
    + r"""
local now = clock(ARGV[1])
local r = redis.call('HMGET', KEYS[1], 'limit', 'window', 'tat', 'blocked_until', 'win_end', 'win_left', 'win_since')
local learned = tonumber(r[2])
local limit, window = tonumber(r[1]), learned
if not limit then limit, window = tonumber(ARGV[2]), tonumber(ARGV[3]) elseif not window then window = tonumber(ARGV[3]) end
local tat, blocked = tonumber(r[3]) or 0, tonumber(r[4]) or 0
local win_end, win_left, win_since = tonumber(r[5]) or 0, tonumber(r[6]) or 0, tonumber(r[7]) or 0
local interval = math.min(tonumber(ARGV[4]), 1 + ARRIVAL_JITTER / window) * window / limit  -- models.pace_interval
local guard = window_guard(learned)
local ahead = tonumber(ARGV[7])
local wanted = math.max(1, math.min(tonumber(ARGV[6]), 1 + math.floor(ahead / interval)))
local ends = win_end + guard
local slots, floor = {}, 0
if now < ends and win_left <= 0 then
  floor = ends
elseif now < win_end then  -- what the service has left in its window goes at once
  local at = math.max(now, blocked)
  for _ = 1, math.min(tonumber(ARGV[6]), win_left) do table.insert(slots, at) end
else
  if now < ends then wanted = math.min(wanted, win_left) end
end
if #slots == 0 then
  for _ = 1, wanted do
    local at = math.max(tat - (tonumber(ARGV[5]) - 1) * interval, blocked, now, floor)
    table.insert(slots, at)
    tat = math.max(tat, at) + interval
  end
  if slots[#slots] - now > ahead then return {0, fmt(slots[#slots] - now - ahead), fmt(now)} end
  redis.call('HSET', KEYS[1], 'tat', fmt(tat))
end
for _, at in ipairs(slots) do  -- state._count
  if at < ends then win_left = win_left - 1 end
  if at >= win_end - guard then win_since = win_since + 1 end
end
redis.call('HSET', KEYS[1], 'win_left', win_left, 'win_since', win_since)
local out = {#slots, fmt(slots[1] - now), fmt(now)}
for _, at in ipairs(slots) do table.insert(out, fmt(at)) end
return out
"""
)

# KEYS: rate ; ARGV: now, limit|'', window|'', block_for|'', reset|'', remaining, left, granted|''
LEARN_RATE = (
    _COMMON
    + _WINDOW
    + r"""
local now = clock(ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'limit', ARGV[2])
  -- A faster rate than the one paced by: the next slot need not wait for the old pace.
  local r = redis.call('HMGET', KEYS[1], 'window', 'tat', 'blocked_until')
  local window = tonumber(ARGV[3]) or tonumber(r[1])
  if window and r[2] then
    local next_at = math.max(now, tonumber(r[3]) or 0) + window / tonumber(ARGV[2])
    if next_at < tonumber(r[2]) then redis.call('HSET', KEYS[1], 'tat', fmt(next_at)) end
  end
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'window', ARGV[3]) end
if ARGV[4] ~= '' and tonumber(ARGV[4]) > 0 then
  local r = redis.call('HMGET', KEYS[1], 'tat', 'blocked_until')
  local blocked = math.max(tonumber(r[2]) or 0, now + tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], 'blocked_until', fmt(blocked), 'tat', fmt(math.max(tonumber(r[1]) or 0, blocked)), 'win_left', 0)
end
if ARGV[5] ~= '' then  -- state.window_seen
  local reset, remaining = tonumber(ARGV[5]), tonumber(ARGV[6])
  local r = redis.call('HMGET', KEYS[1], 'win_id', 'win_left', 'win_since', 'limit', 'win_end', 'window')
  local id = tonumber(r[1])
  if not id or reset > id + 1e-3 then
    local left, since = 0, tonumber(r[3]) or 0
    local guard = window_guard(tonumber(r[6]))
    local granted = tonumber(ARGV[8])
    if granted and granted >= (tonumber(r[5]) or 0) - guard then since = since - 1 end
    if r[4] then left = math.max(0, math.min(remaining, tonumber(r[4])) - math.max(0, since)) end
    local ends = now + math.max(0, tonumber(ARGV[7]))
    if id and granted and granted < (tonumber(r[5]) or 0) - guard then left, ends = 0, now - guard end  -- skewed
    redis.call('HSET', KEYS[1], 'win_id', ARGV[5], 'win_left', left, 'win_since', 0, 'win_end', fmt(ends))
  elseif reset > id - 1e-3 then
    redis.call('HSET', KEYS[1], 'win_left', math.min(tonumber(r[2]) or 0, remaining))
  end
end
local r = redis.call('HMGET', KEYS[1], 'limit', 'window', 'blocked_until', 'tat')
return {r[1] or '', r[2] or '', r[3] or '0', r[4] or '0', fmt(now)}
"""
)

# KEYS: rate ; ARGV: now
RATE_STATE = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
local r = redis.call('HMGET', KEYS[1], 'limit', 'window', 'blocked_until', 'tat')
return {r[1] or '', r[2] or '', r[3] or '0', r[4] or '0', fmt(now)}
"""
)

# KEYS: slots (zset id->expiry), slot info (hash id->holder), meta, waiting (zset holder->expiry),
# waiting since (hash holder->since) ; ARGV: now, id, holder, ttl, default_capacity, wait_ttl
# Fair share: as state.ahead_of (free slots go one at a time to the waiting holder with the
# fewest, the longest waiting among equals); a holder refused is registered as waiting.
ACQUIRE_SLOT = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
purge(KEYS[1], KEYS[2], now)
purge(KEYS[4], KEYS[5], now)
local holder = ARGV[3]
local capacity = tonumber(redis.call('HGET', KEYS[3], 'capacity')) or tonumber(ARGV[5])
local free = capacity - redis.call('ZCARD', KEYS[1])
local since = tonumber(redis.call('HGET', KEYS[5], holder)) or now
local held = {}
for _, h in ipairs(redis.call('HVALS', KEYS[2])) do held[h] = (held[h] or 0) + 1 end
local mine, ahead = held[holder] or 0, 0
local waiting = redis.call('HGETALL', KEYS[5])
for i = 1, #waiting, 2 do
  if waiting[i] ~= holder then
    local theirs = held[waiting[i]] or 0
    if mine > theirs then
      ahead = ahead + mine - theirs
    elseif theirs == mine and tonumber(waiting[i + 1]) < since then
      ahead = ahead + 1
    end
  end
end
if ahead < free then
  redis.call('ZREM', KEYS[4], holder)
  redis.call('HDEL', KEYS[5], holder)
  local expires = now + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[1], fmt(expires), ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], holder)
  return {1, fmt(expires), fmt(now)}
end
redis.call('ZADD', KEYS[4], fmt(now + tonumber(ARGV[6])), holder)
redis.call('HSET', KEYS[5], holder, fmt(since))
if ahead == 0 then return {0, '0', fmt(now)} end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return {0, ARGV[4], fmt(now)} end
return {0, fmt(math.max(0, tonumber(first[2]) - now)), fmt(now)}
"""
)

# KEYS: slots, slot info ; ARGV: now, ttl, id...  -> the ids lost
RENEW_SLOTS = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
purge(KEYS[1], KEYS[2], now)
local lost = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', fmt(now + tonumber(ARGV[2])), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# KEYS: slots, slot info, meta, waiting, waiting since ; ARGV: now, default_capacity
# -> capacity, now, number of leases, (id, holder, expiry) per lease, (holder, since) per waiting
SLOT_STATE = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
purge(KEYS[1], KEYS[2], now)
purge(KEYS[4], KEYS[5], now)
local capacity = redis.call('HGET', KEYS[3], 'capacity') or ARGV[2]
local held = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {capacity, fmt(now), #held / 2}
for i = 1, #held, 2 do
  table.insert(out, held[i])
  table.insert(out, redis.call('HGET', KEYS[2], held[i]) or '')
  table.insert(out, held[i + 1])
end
local waiting = redis.call('HGETALL', KEYS[5])
for i = 1, #waiting, 2 do
  table.insert(out, waiting[i])
  table.insert(out, waiting[i + 1])
end
return out
"""
)

# KEYS: budget (hash), reservation expiries (zset), reservations (hash id->json) ;
# ARGV: now, id, credits, holder, ttl
RESERVE = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
purge(KEYS[2], KEYS[3], now)
local spent, key = roll(KEYS[1], now)
local limit = tonumber(redis.call('HGET', KEYS[1], 'credits'))
local period = redis.call('HGET', KEYS[1], 'period')
local held = reserved(KEYS[3])
local credits = tonumber(ARGV[3])
if spent + held + credits > limit + 1e-9 then
  return {'exhausted', fmt(limit), fmt(spent), fmt(held), period, key}
end
local expires = now + tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], fmt(expires), ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], cjson.encode({c = ARGV[3], h = ARGV[4]}))
return {'ok', fmt(expires)}
"""
)

# KEYS: reservation expiries, reservations ; ARGV: now, ttl, id... -> the ids lost
RENEW_RESERVATIONS = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
purge(KEYS[1], KEYS[2], now)
local lost = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', fmt(now + tonumber(ARGV[2])), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# KEYS: budget, reservation expiries, reservations ; ARGV: now, id, actual -> 1 if it was live
SETTLE = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
purge(KEYS[2], KEYS[3], now)
local live = redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  roll(KEYS[1], now)
  redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[3])
end
return live
"""
)

# KEYS: budget, budget names (set) ; ARGV: now, name, credits, period
SET_BUDGET = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
local old = redis.call('HGET', KEYS[1], 'period')
if old ~= ARGV[4] then
  redis.call('HSET', KEYS[1], 'period', ARGV[4], 'key', period_key(ARGV[4], now), 'spent', '0')
end
redis.call('HSET', KEYS[1], 'credits', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""
)

# KEYS: budget, reservation expiries, reservations ; ARGV: now -> credits, period, key, spent, reserved, count
READ_BUDGET = (
    _COMMON
    + r"""
local now = clock(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
purge(KEYS[2], KEYS[3], now)
local spent, key = roll(KEYS[1], now)
local held, count = reserved(KEYS[3])
return {redis.call('HGET', KEYS[1], 'credits'), redis.call('HGET', KEYS[1], 'period'), key, fmt(spent), fmt(held), count}
"""
)
