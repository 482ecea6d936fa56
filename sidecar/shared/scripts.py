"""The Lua scripts the sidecar runs in Redis: one sync per interval (and one for spend beside
it, when keys have budgets), one exact admission.

Keys, under the namespace `ns`:
- `{ns}:w:{counter}:{minute}`: a hash of requests (`r`) and tokens (`t`) counted in that minute
  of Redis's clock by every instance; it expires after three minutes;
- `{ns}:cool:{deployment}`: a deployment cooling down, its value the cause, its TTL the rest;
- `{ns}:instances`: a sorted set of live instances, each scored by its last heartbeat (ms);
- `{ns}:seq:{instance}`: the last batch of deltas applied from that instance;
- `{ns}:spend:{key}:{period}`: the USD a key spent in a budget period, by every instance; it
  expires a little after two periods (a key without budget_duration keeps it);
- `{ns}:spendseq:{instance}`: the last batch of spend applied from that instance.

Both scripts read Redis's own TIME, so that every instance counts the same minutes. Scripts
name their keys in ARGV, not KEYS: they serve one Redis (or a primary with replicas), not a
cluster, where the keys of one sync would span slots.
"""

from __future__ import annotations

# ARGV: ns, instance, heartbeat_ms, seq,
#   n_deltas, (counter, minute, requests, tokens) * n_deltas,   -- applied once per seq
#   n_reads, counter * n_reads,
#   n_cool, (deployment, ms, cause) * n_cool,      -- cooldowns this instance entered
#   n_watch, deployment * n_watch                   -- cooldowns to read
# Returns: seconds, microseconds, live instances,
#   (requests, tokens, last minute's requests, last minute's tokens) * n_reads,
#   (remaining ms or -2, cause) * n_watch
SYNC = """
local ns = ARGV[1]
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local minute = math.floor(tonumber(time[1]) / 60)
-- A batch of deltas is applied once: a sync that timed out may have run after all, and the
-- instance then sends the same batch again under the same sequence number.
local seqkey = ns .. ':seq:' .. ARGV[2]
local seq = tonumber(ARGV[4])
local fresh = seq > (tonumber(redis.call('GET', seqkey)) or 0)
local deltas = tonumber(ARGV[5])
local i = 6
for _ = 1, deltas do
  if fresh then
    local key = ns .. ':w:' .. ARGV[i] .. ':' .. ARGV[i + 1]
    redis.call('HINCRBY', key, 'r', ARGV[i + 2])
    redis.call('HINCRBY', key, 't', ARGV[i + 3])
    redis.call('PEXPIRE', key, 180000)
  end
  i = i + 4
end
if fresh and deltas > 0 then
  redis.call('SET', seqkey, seq, 'PX', 600000)
end
local members = ns .. ':instances'
local heartbeat = tonumber(ARGV[3])
redis.call('ZADD', members, now_ms, ARGV[2])
redis.call('ZREMRANGEBYSCORE', members, '-inf', now_ms - heartbeat)
redis.call('PEXPIRE', members, heartbeat * 2)
local out = {time[1], time[2], redis.call('ZCARD', members)}
local reads = tonumber(ARGV[i])
i = i + 1
for _ = 1, reads do
  local stem = ns .. ':w:' .. ARGV[i] .. ':'
  local now = redis.call('HMGET', stem .. minute, 'r', 't')
  local last = redis.call('HMGET', stem .. (minute - 1), 'r', 't')
  out[#out + 1] = tonumber(now[1]) or 0
  out[#out + 1] = tonumber(now[2]) or 0
  out[#out + 1] = tonumber(last[1]) or 0
  out[#out + 1] = tonumber(last[2]) or 0
  i = i + 1
end
local cool = tonumber(ARGV[i])
i = i + 1
for _ = 1, cool do
  local key = ns .. ':cool:' .. ARGV[i]
  if redis.call('PTTL', key) < tonumber(ARGV[i + 1]) then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[i + 1])
  end
  i = i + 3
end
local watch = tonumber(ARGV[i])
i = i + 1
for _ = 1, watch do
  local key = ns .. ':cool:' .. ARGV[i]
  local ttl = redis.call('PTTL', key)
  out[#out + 1] = ttl
  out[#out + 1] = ttl > 0 and (redis.call('GET', key) or '') or ''
  i = i + 1
end
return out
"""

# ARGV: ns, tokens, n, (counter, rpm or -1, tpm or -1) * n
# Admits a request against every counter at once, or against none. Returns {1} when admitted,
# else {0, ms until the minute ends, index of the counter that is full (1-based), 1 when its
# rpm is the limit reached or 2 when its tpm is}.
ADMIT = """
local ns = ARGV[1]
local tokens = tonumber(ARGV[2])
local time = redis.call('TIME')
local seconds = tonumber(time[1])
local minute = math.floor(seconds / 60)
local into = (seconds % 60) + tonumber(time[2]) / 1000000
local weight = 1 - into / 60
local n = tonumber(ARGV[3])
local keys = {}
for c = 1, n do
  local at = 4 + (c - 1) * 3
  local stem = ns .. ':w:' .. ARGV[at] .. ':'
  local now = redis.call('HMGET', stem .. minute, 'r', 't')
  local last = redis.call('HMGET', stem .. (minute - 1), 'r', 't')
  local rpm, tpm = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local r = (tonumber(now[1]) or 0) + (tonumber(last[1]) or 0) * weight
  local t = (tonumber(now[2]) or 0) + (tonumber(last[2]) or 0) * weight
  if (rpm >= 0 and r >= rpm) or (tpm >= 0 and t >= tpm) then
    local which = (rpm >= 0 and r >= rpm) and 1 or 2
    return {0, math.max(1000, math.floor((60 - into) * 1000)), c, which}
  end
  keys[c] = stem .. minute
end
for c = 1, n do
  redis.call('HINCRBY', keys[c], 'r', 1)
  redis.call('HINCRBY', keys[c], 't', tokens)
  redis.call('PEXPIRE', keys[c], 180000)
end
return {1}
"""


# ARGV: ns, instance, seq, n, (key, period, USD spent since the last batch, ttl s or 0) * n
# Returns each key's sum for its period (a string: INCRBYFLOAT's), in ARGV's order. A batch is
# applied once per sequence number, as the sync's deltas are.
SPEND = """
local ns = ARGV[1]
local seqkey = ns .. ':spendseq:' .. ARGV[2]
local seq = tonumber(ARGV[3])
local fresh = seq > (tonumber(redis.call('GET', seqkey)) or 0)
local out = {}
for c = 0, tonumber(ARGV[4]) - 1 do
  local at = 5 + c * 4
  local key = ns .. ':spend:' .. ARGV[at] .. ':' .. ARGV[at + 1]
  if fresh and tonumber(ARGV[at + 2]) > 0 then
    out[#out + 1] = redis.call('INCRBYFLOAT', key, ARGV[at + 2])
    if tonumber(ARGV[at + 3]) > 0 then
      redis.call('EXPIRE', key, ARGV[at + 3])
    end
  else
    out[#out + 1] = redis.call('GET', key) or '0'
  end
end
if fresh then
  -- Kept a day: a batch whose answer was lost is sent again once Redis is back, however long
  -- it was away (within the day), and applied once.
  redis.call('SET', seqkey, seq, 'EX', 86400)
end
return out
"""
