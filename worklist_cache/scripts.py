"""The feed's Lua scripts: each runs atomically in Redis, one tenant's keys at a time.

`feed.WorklistFeed` registers and calls them; the Python side of each rule they mirror
(the view filter, the urgency order) lives in `views` and `feed`, and
tests/test_scope_rule.py proves the two agree.
"""

from __future__ import annotations

# Every key a script touches shares the tenant's hash tag, so a tenant's scripts run in
# one Redis Cluster slot; the index keys are derived inside the script from `prefix`.

# Retention, shared by the apply and the maintenance: drop up to `count` closed exams
# scheduled before `cutoff` (the rebuild's window, `rebuild.in_scope`), oldest first.
# The row and its index entry go; the version stays in `versions`, so a replay of an
# older delta of a pruned exam is still stale and never brings it back.
_PRUNE_FN = """
local function prune(exams, closed, prefix, cutoff, count)
  local gone = redis.call('ZRANGEBYSCORE', closed, '-inf', '(' .. cutoff, 'LIMIT', 0, count)
  for _, id in ipairs(gone) do
    local raw = redis.call('HGET', exams, id)
    if raw then
      local row = cjson.decode(raw)
      redis.call('ZREM', prefix .. ':idx:' .. row['status'] .. ':' .. row['site'], id)
      redis.call('HDEL', exams, id)
    end
    redis.call('ZREM', closed, id)
  end
  return #gone
end
"""

# KEYS: versions, exams, feed, epoch, sites, closed
# ARGV: exam_id, version, op, delta_json, maxlen, candidate_epoch, channel, prefix,
#       status, site, score, publish_command ("PUBLISH" or "SPUBLISH"),
#       retention cutoff (ms), how many expired closed exams to prune, scheduled_at,
#       closed ("1" when `status` is a closed state)
# Returns the feed offset, or false when the delta is stale.
APPLY = (
    _PRUNE_FN
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return false end
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[4], epoch)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
prune(KEYS[2], KEYS[6], ARGV[8], ARGV[13], tonumber(ARGV[14]))
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local row = cjson.decode(old)
  redis.call('ZREM', ARGV[8] .. ':idx:' .. row['status'] .. ':' .. row['site'], ARGV[1])
end
if ARGV[3] == 'remove' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('ZADD', ARGV[8] .. ':idx:' .. ARGV[9] .. ':' .. ARGV[10], ARGV[11], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[10])
  if ARGV[16] == '1' then
    redis.call('ZADD', KEYS[6], ARGV[15], ARGV[1])
  else
    redis.call('ZREM', KEYS[6], ARGV[1])
  end
end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'd', ARGV[4])
redis.call(ARGV[12], ARGV[7],
  '{"epoch":"' .. epoch .. '","offset":"' .. id .. '","delta":' .. ARGV[4] .. '}')
return id
"""
)

# The maintenance's prune: first index the named rows if they are closed (rows cached
# before closed exams had their index), then prune up to `count`.
# KEYS: exams, closed  ARGV: prefix, cutoff, count, closed statuses (comma-separated),
# exam ids...  Returns how many were pruned.
PRUNE = (
    _PRUNE_FN
    + """
local closed_states = {}
for item in string.gmatch(ARGV[4], '[^,]+') do closed_states[item] = true end
for i = 5, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local row = cjson.decode(raw)
    if closed_states[row['status']] then
      redis.call('ZADD', KEYS[2], row['scheduled_at'], ARGV[i])
    end
  end
end
return prune(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))
"""
)

# A view's snapshot in one call: the (status, site) indexes it names, merged in urgency
# order as they are walked (a heap of cursors, each read in chunks), each row checked
# against the rest of the view, at most `limit` rows returned. The work is bounded: a
# view filtered only by state and site counts its rows from the index sizes and walks
# `limit` entries; any other filter walks at most max(limit, scan_limit) entries, and
# if that stops it early, `total` counts only the matches found so far (capped = 1).
# A row matches a filter when its JSON holds `"field":"value"` (each of `modality`,
# `priority`, `subspecialty`: any of the listed values) and, for "my reads",
# `"claimed_by":` followed by `me`, which the caller encodes as the rows were (orjson);
# in valid JSON that text can only be the field itself, so no row is decoded.
# KEYS: exams, epoch, feed, sites
# ARGV: candidate_epoch, prefix, limit, statuses, sites, modalities, priorities,
#       subspecialties (each comma-separated, empty = any), me (JSON string; "" = not
#       "my reads"), ids_only ("1": exam ids instead of rows), scan_limit
# Returns {epoch, offset, total, capped (0 or 1), rows (or ids)...}.
SNAPSHOT = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local offset = '0-0'
if last[1] then offset = last[1][1] end

local filters = {}
local function needles(field, csv)
  local out = {}
  for item in string.gmatch(csv, '[^,]+') do
    table.insert(out, '"' .. field .. '":"' .. item .. '"')
  end
  if #out > 0 then table.insert(filters, out) end
end
needles('modality', ARGV[6])
needles('priority', ARGV[7])
needles('subspecialty', ARGV[8])
if ARGV[9] ~= '' then table.insert(filters, {'"claimed_by":' .. ARGV[9]}) end
local function matches(raw)
  for _, any in ipairs(filters) do
    local hit = false
    for _, needle in ipairs(any) do
      if string.find(raw, needle, 1, true) then hit = true; break end
    end
    if not hit then return false end
  end
  return true
end
local filtered = #filters > 0

local statuses = {}
for item in string.gmatch(ARGV[4], '[^,]+') do table.insert(statuses, item) end
local sites = {}
for item in string.gmatch(ARGV[5], '[^,]+') do table.insert(sites, item) end
if #sites == 0 then sites = redis.call('SMEMBERS', KEYS[4]) end
local limit = tonumber(ARGV[3])
local budget = math.max(limit, tonumber(ARGV[11]))

local CHUNK, BATCH = 256, 128
local function fill(c)
  if c.rank >= c.size then return false end
  c.buf = redis.call('ZRANGE', c.key, c.rank, c.rank + CHUNK - 1, 'WITHSCORES')
  c.rank = c.rank + CHUNK
  if #c.buf == 0 then return false end
  c.i, c.id, c.score = 1, c.buf[1], tonumber(c.buf[2])
  return true
end
local function less(a, b)
  return a.score < b.score or (a.score == b.score and a.id < b.id)
end
local heap, indexed = {}, 0
for _, status in ipairs(statuses) do
  for _, site in ipairs(sites) do
    local key = ARGV[2] .. ':idx:' .. status .. ':' .. site
    local size = redis.call('ZCARD', key)
    if size > 0 then
      indexed = indexed + size
      local c = {key = key, size = size, rank = 0}
      if fill(c) then table.insert(heap, c) end
    end
  end
end
table.sort(heap, less)  -- a sorted array is a heap
local n = #heap
local function pop()
  local c = heap[1]
  local id = c.id
  c.i = c.i + 2
  if c.i <= #c.buf then
    c.id, c.score = c.buf[c.i], tonumber(c.buf[c.i + 1])
  elseif not fill(c) then
    heap[1] = heap[n]; heap[n] = nil; n = n - 1
  end
  local i = 1
  while true do
    local m, l = i, 2 * i
    if l <= n and less(heap[l], heap[m]) then m = l end
    if l + 1 <= n and less(heap[l + 1], heap[m]) then m = l + 1 end
    if m == i then break end
    heap[i], heap[m] = heap[m], heap[i]
    i = m
  end
  return id
end

local rows, matched, walked, capped = {}, 0, 0, 0
while n > 0 do
  local want = BATCH
  if not filtered then want = math.min(want, limit - #rows) end
  want = math.min(want, budget - walked)
  if want <= 0 then
    if filtered then capped = 1 end
    break
  end
  local ids = {}
  while #ids < want and n > 0 do table.insert(ids, pop()) end
  walked = walked + #ids
  local raws = redis.call('HMGET', KEYS[1], unpack(ids))
  for j, raw in ipairs(raws) do
    if raw and (not filtered or matches(raw)) then
      matched = matched + 1
      if #rows < limit then
        if ARGV[10] == '1' then table.insert(rows, ids[j]) else table.insert(rows, raw) end
      end
    end
  end
end
local total = matched
if not filtered then total = indexed end
local out = {epoch, offset, total, capped}
for _, raw in ipairs(rows) do table.insert(out, raw) end
return out
"""

# Peer reviews: the same idempotent apply, without history (a coordinator's view is
# re-read whole on reconnect). KEYS: versions, reviews  ARGV: exam_id, version, json,
# channel, publish_command.  Returns 1 when applied, false when stale.
APPLY_REVIEW = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call(ARGV[5], ARGV[4], ARGV[3])
return 1
"""

__all__ = ["APPLY", "APPLY_REVIEW", "PRUNE", "SNAPSHOT"]

# A lease held by one owner: KEYS: lease   ARGV: owner, ttl ms. Takes a free lease or
# renews the owner's own; 1 when the owner holds it afterwards. Shared by the relay's
# shard leases and the gateway's per-tenant STAT offer desk.
LEASE_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
