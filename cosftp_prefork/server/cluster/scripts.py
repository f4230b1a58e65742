"""The Lua scripts every call to the cluster's Redis runs (``EVALSHA``, one round trip,
atomic), each with ``LIBRARY`` in front; only commands and arguments that every Redis since
2.6 accepts."""

# Helpers every script starts with. A count is an integer of at most 15 digits (what
# INCR/HINCRBY accept without overflow); a ban is a string with an expiry: anything else
# under a ban's name is not ours and is deleted. ``ban_of`` answers the milliseconds a ban
# has left (0: none). ``note_ban`` adds an address to the bans made (a sorted set scored by
# a counter, as the unbans are), which every node's heartbeat brings to the node; it answers
# the classes of keys it repaired. A ban's value is ``<when it ends>:<epoch>:<order>``, its
# order the unban counter when it was written and its epoch that counter's ('' if none;
# ``ban_value``, ``write_ban``): an ``unban --all`` deletes only the bans older than itself
# (``written_since``), so a ban made while it runs holds. A ban of another epoch is older
# than every unban of this one: the counter expires 7 days after the last unban, a ban may
# last a year, and a counter made anew numbers from 1 again (found: an ``unban --all`` took
# a ban ordered 57 by the counter before for one made while it ran, and kept it). A value
# without an epoch (``<end>:<order>``, the version before) is judged by its number, kept
# only if it is no higher than the counter now (higher: of a counter before); one without
# an order, written before there was one, is older than every unban.
# ``epoch_of`` answers the unban counter's epoch: a token the caller drew, written by
# ``new_epoch`` (before the counter's INCR) when there is no counter, or no epoch (one an
# older version made), so that a counter made anew (Redis lost its keys, or they expired)
# is not taken by a node for the one it counted against, whatever its number; '' if there
# is none. ``other_epoch``: whether it is not ``seen`` (a node that saw none judges by the
# number alone, as before there was one). ``new_epoch`` answers the error Redis gave the
# write (nil if none: an ACL may refuse it), and whether the key held garbage.
LIBRARY = """
local function kind(key) return redis.call('TYPE', key)['ok'] end
local function integer(value)
  if value and #value < 16 and string.match(value, '^%-?%d+$') then
    return tonumber(value)
  end
end
local function counter_of(key)
  local found = kind(key)
  if found == 'none' then return 0, false end
  local value = found == 'string' and integer(redis.call('GET', key))
  if value and value >= 0 then return value, false end
  redis.call('DEL', key)
  return 0, true
end
local function ban_of(key)
  local found = kind(key)
  if found == 'none' then return 0, false end
  if found == 'string' then
    local left = redis.call('PTTL', key)
    if left > 0 then return left, false end
  end
  redis.call('DEL', key)
  return 0, true
end
local function epoch_of(key)
  local found = kind(key)
  if found == 'none' then return '', false end
  local value = found == 'string' and redis.call('GET', key)
  if value and #value == 16 and string.match(value, '^[0-9a-f]+$') then return value, false end
  redis.call('DEL', key)
  return '', true
end
local function other_epoch(key, seen)
  local epoch, bad = epoch_of(key)
  return seen ~= '' and epoch ~= seen, epoch, bad
end
local function new_epoch(counter, key, token)
  local epoch, bad = epoch_of(key)
  if kind(counter) ~= 'none' and epoch ~= '' then return nil, bad end
  local written = redis.pcall('SET', key, token)
  return type(written) == 'table' and written.err or nil, bad
end
local function ban_value(ends, counter, epoch_key)
  local order, bad = counter_of(counter)
  local epoch, bad_epoch = epoch_of(epoch_key)
  local repaired = {}
  if bad then table.insert(repaired, 'unban-count') end
  if bad_epoch then table.insert(repaired, 'unban-epoch') end
  return ends .. ':' .. epoch .. ':' .. order, repaired
end
local function written_since(key, before, epoch, counter)
  local value = redis.call('GET', key)
  local of, order = string.match(value, '^%d+:(%x*):(%d+)$')
  if order then return of == epoch and (integer(order) or 0) >= before end
  order = integer(string.match(value, '^%d+:(%d+)$'))
  return order ~= nil and order >= before and order <= counter
end
local function write_ban(key, ends, seconds, counter, epoch_key)
  local value, repaired = ban_value(ends, counter, epoch_key)
  redis.call('SET', key, value, 'EX', seconds)
  return repaired
end
local function note_ban(made, count, address, kept, expiry)
  local repaired = {}
  local found = kind(made)
  if found ~= 'none' and found ~= 'zset' then
    redis.call('DEL', made)
    table.insert(repaired, 'bans-made')
  end
  local _, bad = counter_of(count)
  if bad then table.insert(repaired, 'ban-count') end
  redis.call('ZADD', made, redis.call('INCR', count), address)
  redis.call('ZREMRANGEBYRANK', made, 0, -1 - tonumber(kept))
  redis.call('EXPIRE', made, expiry)
  redis.call('EXPIRE', count, expiry)
  return repaired
end
"""

# Admission: how long is the address banned, and how many connections of it, logged-in sessions
# and sessions of the account do the other live nodes hold. KEYS: nodes, the ban; ARGV: live
# since, this node, the address, the prefix of the nodes' hashes, the logged-in field, the
# account's field (or the logged-in field again when there is no account yet).
ADMIT = """
local banned, repaired = ban_of(KEYS[2])
local per_ip, logged_in, account = 0, 0, 0
if kind(KEYS[1]) == 'zset' then
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
    local key = ARGV[4] .. node
    if node ~= ARGV[2] and kind(key) == 'hash' then
      local counts = redis.call('HMGET', key, ARGV[3], ARGV[5], ARGV[6])
      per_ip = per_ip + math.max(0, integer(counts[1]) or 0)
      logged_in = logged_in + math.max(0, integer(counts[2]) or 0)
      account = account + math.max(0, integer(counts[3]) or 0)
    end
  end
end
return {{banned, per_ip, logged_in, account}, repaired and {'ban:*'} or {}}
"""

# The milliseconds each of the bans KEYS has left (0: none).
BANS = """
local found, repaired = {}, {}
for i, key in ipairs(KEYS) do
  local banned, bad = ban_of(key)
  found[i] = banned
  if bad then repaired = {'ban:*'} end
end
return {found, repaired}
"""

# A failed login: count it in the window that began with the first (INCR, then EXPIRE
# only if the count has none: what EXPIRE ... NX does on Redis 7); at the limit, or when
# the node's own count earned a ban (ARGV[8] is 1), ban, and note the ban for every node,
# in this same call: the ban takes its place in Redis's order of bans and unbans now, not
# at the node's next heartbeat, after an unban it followed. KEYS: the failures, the ban,
# the bans made, their counter, the unban counter, its epoch; ARGV: limit, window, ban seconds, when
# the ban ends, the address, bans kept, their expiry, earned by the node's count (1/0).
FAIL = """
local repaired = {}
local found = kind(KEYS[1])
if found ~= 'none' then
  local failures = found == 'string' and integer(redis.call('GET', KEYS[1]))
  if not failures or failures < 0 then
    redis.call('DEL', KEYS[1])
    repaired = {'fail:*'}
  end
end
local failures = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if failures < tonumber(ARGV[1]) and ARGV[8] ~= '1' then return {0, repaired} end
for _, key_class in ipairs(write_ban(KEYS[2], ARGV[4], ARGV[3], KEYS[5], KEYS[6])) do
  table.insert(repaired, key_class)
end
redis.call('DEL', KEYS[1])
for _, key_class in ipairs(note_ban(KEYS[3], KEYS[4], ARGV[5], ARGV[6], ARGV[7])) do
  table.insert(repaired, key_class)
end
return {1, repaired}
"""

# This node gained or lost connections. KEYS: its hash; ARGV: expiry, then field, change.
COUNTED = """
local repaired = {}
local found = kind(KEYS[1])
if found ~= 'none' and found ~= 'hash' then
  redis.call('DEL', KEYS[1])
  repaired = {'conn:*'}
end
for i = 2, #ARGV, 2 do
  local count = redis.call('HGET', KEYS[1], ARGV[i])
  if count and not integer(count) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    repaired = {'conn:*'}
  end
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {0, repaired}
"""

# The sequence of this node's counted changes (empty if none yet), read by a heartbeat
# before it reads the session table. KEYS: the node's hash; ARGV: the sequence field.
SEQUENCE = """
if kind(KEYS[1]) ~= 'hash' then return {'', {}} end
return {redis.call('HGET', KEYS[1], ARGV[1]) or '', {}}
"""

# The heartbeat: rewrite this node's hash whole, unless a counted change landed since the
# heartbeat read the sequence (its table may predate that change: the rewrite would lose it;
# the hash keeps the counts HINCRBY made and the next heartbeat rewrites), and mark the node
# alive; bring the unbans after the last one this worker saw (all of them if the counter
# started again: Redis restarted, or the keys expired), and the number of the last one
# brought (all of them too if the counter's epoch is not the one this worker counted
# against: its number says nothing then; answered with the number). KEYS: its hash, nodes,
# unbans, the unban counter; ARGV: node, now, expiry, forget nodes silent since, the last
# unban seen, the sequence field, the sequence read ('*': rewrite anyway), the last ban made
# seen, the bans' prefix, the bans kept, the epoch of the last unban seen ('': none), then
# field, count pairs. Answers whether it rewrote, whether the node was unknown: not among the
# nodes, or silent for longer than the expiry (Redis lost its keys, or no worker of the
# node reached it for that long; only this script writes the nodes, so a count or a
# reservation of the node since does not hide it), and the bans made after the last one
# this worker saw (all of them if their counter started again) that Redis still holds,
# address then milliseconds left, with the number of the last one brought; if an ``unban
# --all`` was among the unbans brought, all those noted that Redis still holds, not only
# the new ones (a ban made while that unban ran holds, and this worker may have brought it
# before the unban was noted); and the bans Redis holds now of the addresses the unbans
# brought name, address then milliseconds left: each was made after its unban (which
# deleted the ban before it), though the bans made may have brought it in an earlier
# heartbeat (found: with more than 100 unbans to bring, the 101st came a heartbeat after
# the ban made after it, and the node forgot that ban). KEYS: then the bans made, their
# counter, the unban counter's epoch.
HEARTBEAT = """
local repaired = {}
local counter, bad = counter_of(KEYS[4])
if bad then table.insert(repaired, 'unban-count') end
local moved, epoch, bad_epoch = other_epoch(KEYS[7], ARGV[11])
if bad_epoch then table.insert(repaired, 'unban-epoch') end
local seen = tonumber(ARGV[5])
if counter < seen or moved then seen = 0 end
local unbans = {}
local found = kind(KEYS[3])
if found == 'zset' then
  unbans = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. seen, '+inf', 'LIMIT', 0, 100)
  if #unbans > 0 then seen = tonumber(redis.call('ZSCORE', KEYS[3], unbans[#unbans])) end
elseif found ~= 'none' then
  redis.call('DEL', KEYS[3])
  table.insert(repaired, 'unbans')
end
if #unbans < 100 then
  seen = counter  -- every unban noted is brought; the numbers left are those RESERVE took
end
found = kind(KEYS[1])
if found ~= 'none' and found ~= 'hash' then table.insert(repaired, 'conn:*') end
local sequence = found == 'hash' and redis.call('HGET', KEYS[1], ARGV[6]) or ''
local rewrite = ARGV[7] == '*' or sequence == ARGV[7]
if rewrite then
  redis.call('DEL', KEYS[1])
  for i = 12, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  if sequence ~= '' then redis.call('HSET', KEYS[1], ARGV[6], sequence) end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
found = kind(KEYS[2])
if found ~= 'none' and found ~= 'zset' then
  redis.call('DEL', KEYS[2])
  table.insert(repaired, 'nodes')
end
local last = found == 'zset' and redis.call('ZSCORE', KEYS[2], ARGV[1])
local known = last and tonumber(last) >= tonumber(ARGV[2]) - tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
local made, made_seen, garbage = {}, tonumber(ARGV[8]), false
local made_count, bad_count = counter_of(KEYS[6])
if bad_count then table.insert(repaired, 'ban-count') end
if made_count < made_seen then made_seen = 0 end
local everything = false
for _, member in ipairs(unbans) do
  if string.sub(member, -2) == ':*' then everything = true end
end
found = kind(KEYS[5])
if found == 'zset' then
  local from, most = made_seen, 100
  if everything then from, most = 0, tonumber(ARGV[10]) end
  local entries = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. from, '+inf', 'WITHSCORES',
                             'LIMIT', 0, most)
  for i = 1, #entries, 2 do
    local left, bad = ban_of(ARGV[9] .. entries[i])
    garbage = garbage or bad
    if left > 0 then
      table.insert(made, entries[i])
      table.insert(made, left)
    end
    made_seen = math.max(made_seen, tonumber(entries[i + 1]))
  end
elseif found ~= 'none' then
  redis.call('DEL', KEYS[5])
  table.insert(repaired, 'bans-made')
end
local standing = {}
for _, member in ipairs(unbans) do
  local address = string.match(member, '^[^:]*:[^:]*:(.+)$')
  if address and address ~= '*' then
    local left, bad = ban_of(ARGV[9] .. address)
    garbage = garbage or bad
    if left > 0 then
      table.insert(standing, address)
      table.insert(standing, left)
    end
  end
end
if garbage then table.insert(repaired, 'ban:*') end
return {{seen, unbans, rewrite and 1 or 0, known and 0 or 1, made_seen, made, standing,
         epoch}, repaired}
"""

# Whether Redis takes writes: a write that changes nothing in the end (the key is written,
# then deleted at once; no other script uses it), which a replica, a master short of
# replicas and one whose save failed refuse all the same. A write that adds memory first:
# one out of memory serves a DEL (redis-server 7.0.15 with maxmemory 1 ran the DEL alone
# and refused the SET). KEYS: that key.
WRITABLE = """
redis.call('SET', KEYS[1], '', 'PX', 1000)
redis.call('DEL', KEYS[1])
return {0, {}}
"""

# The bans a node holds, published again where Redis holds none (it lost them, or never had
# them: a ban made while Redis could not be asked), and noted among the bans made (every
# node, one started since too, holds them), each ordered after the unbans so far. Nothing
# is written if an unban was noted, or an ``unban --all`` began (``RESERVE``), since the
# worker's last heartbeat (the counter passed the last one it brought):
# its node may still hold a ban that unban lifted, which this would make again everywhere;
# the worker tries again after its next heartbeat has brought the unban (or once that
# ``unban --all`` ended: its mark gone). So too if the counter's epoch is not the one the
# worker counted against (Redis lost its keys since: its number says nothing). KEYS: the
# bans made, their counter, the unban counter, the mark of an ``unban --all`` running, the
# counter's epoch, then the bans; ARGV: bans kept, their expiry, the last unban the worker
# brought, its epoch, then per ban its address, when it ends and the seconds left. Answers
# how many it wrote, -1 for none because of an unban.
REPUBLISH = """
local unbans, bad = counter_of(KEYS[3])
local repaired, garbage = bad and {'unban-count'} or {}, false
local moved, epoch, bad_epoch = other_epoch(KEYS[5], ARGV[4])
if bad_epoch then table.insert(repaired, 'unban-epoch') end
if unbans > tonumber(ARGV[3]) or moved or kind(KEYS[4]) ~= 'none' then
  return {-1, repaired}
end
local written = 0
for i = 6, #KEYS do
  local key, at = KEYS[i], 3 * (i - 6) + 5
  local banned, bad_ban = ban_of(key)
  garbage = garbage or bad_ban
  if banned == 0 then
    redis.call('SET', key, ARGV[at + 1] .. ':' .. epoch .. ':' .. unbans, 'EX', ARGV[at + 2])
    for _, key_class in ipairs(note_ban(KEYS[1], KEYS[2], ARGV[at], ARGV[1], ARGV[2])) do
      table.insert(repaired, key_class)
    end
    written = written + 1
  end
end
if garbage then table.insert(repaired, 'ban:*') end
return {written, repaired}
"""

# cosftpctl unban: delete KEYS[4..] (bans and failure counts; return how many bans ran and
# the failed logins counted) and, unless ARGV[2] is empty, note the unban of ARGV[2] (an
# address, or * for every one) made at ARGV[1] for the nodes' workers. An ``unban --all``
# (ARGV[6], the number ``RESERVE`` gave it, of the epoch ARGV[9]) deletes only the bans
# ordered before it: one made while it runs (written with that number or a later one, of
# that epoch: ``written_since``) holds; each page keeps its mark alive, its note deletes
# it. KEYS: unbans, the unban counter, the mark of an ``unban --all`` running, the
# counter's epoch, then the keys; ARGV: when, what, unbans kept, their expiry, the bans'
# prefix, the number of the ``unban --all`` ('' for one address), the mark's seconds, a
# new epoch's token (written if the counter is made anew), the epoch of the ``unban
# --all``'s number ('' for one address). Also answers the error Redis gave the note (''
# if none): once a script wrote, Redis refuses it nothing for its state (OOM,
# READONLY...), but an ACL may refuse the note after the deletes, which stay; the caller
# says so rather than that nothing was done.
UNBAN = """
local repaired, bans, failures = {}, 0, 0
local before = integer(ARGV[6])
local counter = 0  -- the counter now: a ban without an epoch ordered past it is of one before
if before then counter = counter_of(KEYS[2]) end
for i = 5, #KEYS do
  local key, keep = KEYS[i], false
  if string.sub(key, 1, #ARGV[5]) == ARGV[5] then
    local banned, bad = ban_of(key)
    keep = banned > 0 and before ~= nil and written_since(key, before, ARGV[9], counter)
    if banned > 0 and not keep then bans = bans + 1 end
    if bad then repaired = {'ban:*'} end
  elseif kind(key) == 'string' then
    failures = failures + math.max(0, integer(redis.call('GET', key)) or 0)
  end
  if not keep then redis.call('DEL', key) end
end
if before then
  if ARGV[2] == '' then
    redis.call('EXPIRE', KEYS[3], ARGV[7])
  elseif redis.call('GET', KEYS[3]) == ARGV[6] then
    redis.call('DEL', KEYS[3])
  end
end
if ARGV[2] ~= '' then
  local found = kind(KEYS[1])
  if found ~= 'none' and found ~= 'zset' then
    redis.call('DEL', KEYS[1])
    table.insert(repaired, 'unbans')
  end
  local _, bad = counter_of(KEYS[2])
  if bad then table.insert(repaired, 'unban-count') end
  local refused, bad_epoch = new_epoch(KEYS[2], KEYS[4], ARGV[8])
  if bad_epoch then table.insert(repaired, 'unban-epoch') end
  if refused then return {{bans, failures, refused}, repaired} end
  local number = redis.pcall('INCR', KEYS[2])
  if type(number) == 'table' then return {{bans, failures, number.err}, repaired} end
  local added = redis.pcall('ZADD', KEYS[1], number, number .. ':' .. ARGV[1] .. ':' .. ARGV[2])
  if type(added) == 'table' then return {{bans, failures, added.err}, repaired} end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[3]))
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
return {{bans, failures, ''}, repaired}
"""

# The start of an ``unban --all``: its number, from the unban counter, which orders the
# bans before it (deleted) and those made while it runs (kept, ``UNBAN``), and its mark,
# which holds every node's bans published again (``REPUBLISH``) until its note: they would
# be written after its number, and kept. KEYS: the unban counter, the mark, the counter's
# epoch; ARGV: the counter's expiry, the mark's seconds (each page renews it: an unban cut
# short leaves none for longer), a new epoch's token (written if the counter is made
# anew). Answers the number and the counter's epoch.
RESERVE = """
local _, bad = counter_of(KEYS[1])
local repaired = bad and {'unban-count'} or {}
local refused, bad_epoch = new_epoch(KEYS[1], KEYS[3], ARGV[3])
if bad_epoch then table.insert(repaired, 'unban-epoch') end
if refused then return redis.error_reply(refused) end
local number = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('SET', KEYS[2], number, 'EX', ARGV[2])
local epoch = epoch_of(KEYS[3])
return {{number, epoch}, repaired}
"""

# A ban made through a node's admin API, in Redis at once (ordered after the unbans so
# far, noted among the bans made), so that an unban before it cannot lift it: the longer
# of it and a ban Redis holds. KEYS: the ban, the bans made, their counter, the unban
# counter, its epoch; ARGV: the address, when it ends, its seconds, bans kept, their expiry.
BAN = """
local left, bad = ban_of(KEYS[1])
local repaired = bad and {'ban:*'} or {}
if left > tonumber(ARGV[3]) * 1000 then
  local ends = string.match(redis.call('GET', KEYS[1]), '^(%d+)') or ARGV[2]
  local value, bad_order = ban_value(ends, KEYS[4], KEYS[5])
  redis.call('SET', KEYS[1], value, 'PX', left)
  for _, key_class in ipairs(bad_order) do table.insert(repaired, key_class) end
else
  for _, key_class in ipairs(write_ban(KEYS[1], ARGV[2], ARGV[3], KEYS[4], KEYS[5])) do
    table.insert(repaired, key_class)
  end
end
for _, key_class in ipairs(note_ban(KEYS[2], KEYS[3], ARGV[1], ARGV[4], ARGV[5])) do
  table.insert(repaired, key_class)
end
return {1, repaired}
"""

# cosftpctl bans: the value and milliseconds left of each of KEYS that holds a string.
READ = """
local found = {}
for i, key in ipairs(KEYS) do
  if kind(key) == 'string' then
    found[i] = {redis.call('GET', key), redis.call('PTTL', key)}
  else
    found[i] = false
  end
end
return {found, {}}
"""
