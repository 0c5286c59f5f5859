//! The Lua scripts that read and change a limit in one atomic step.
//!
//! Each script reads the clock with `TIME` on the Redis server, so the
//! processes sharing a limit may disagree about the time without harm.
//! Numbers are written with `%.0f`: Redis turns a bare Lua number into a
//! string with 14 significant digits, which would round a microsecond
//! timestamp (16 digits).
//!
//! Scripts that write after reading `TIME` first switch Redis 3.2–4.x to
//! replicating their effects (the default from Redis 5; a no-op there), so
//! the clock is read once, on the primary.
//!
//! Each script touches one limit's keys (a rate limit's bucket and its
//! given-up bookings), whose names carry the limit's hash tag, so the
//! scripts run unchanged on Redis Cluster.

/// GCRA, the same arithmetic as `tower_fanout_core`'s `TokenBucket`, in
/// microseconds of the server's clock.
///
/// The key holds the theoretical arrival time (TAT): the moment at which the
/// bucket is full again. Taking `cost` tokens pushes it by `cost`
/// intervals; the tokens are there when the pushed TAT is at most `burst`
/// intervals ahead of now. The key expires at the TAT, when a missing key
/// and the stored state mean the same thing (a full bucket).
///
/// A caller that would wait first looks among the bookings given up by
/// callers that left ([`GCRA_GIVE_BACK`]) for one whose slot comes sooner
/// and not before now, as core's bucket does: it takes that slot (its
/// tokens at their own time, so the bound holds) and books nothing new.
///
/// `KEYS[1]`: the bucket; `KEYS[2]`: its given-up bookings, a sorted set
/// scored by each booking's end (its TAT), members `"<end>:<tokens>"`.
/// `ARGV`: interval (µs per token), burst (tokens), cost (tokens, at least
/// 1), the longest wait booked (µs: a caller short of tokens books them and
/// is told how long to wait when that wait is at most this; past it, or
/// with `0` (fail fast), nothing is taken).
///
/// Returns `{admitted, wait_us, tat}`: admitted `1` with the wait before the
/// tokens are there (0: now) and the TAT that ends the booking (to give it
/// up), or `0` with the wait after which they would have been there.
pub(crate) const GCRA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval * cost
local ahead = new_tat - now
if ahead > tolerance and max_wait > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  -- Bookings that ended by now can matter no more.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local from = now + tolerance
  local given = redis.call('ZRANGEBYSCORE', KEYS[2], from, '+inf', 'WITHSCORES', 'LIMIT', 0, 64)
  for i = 1, #given, 2 do
    local e = tonumber(given[i + 1])
    local k = tonumber(string.match(given[i], ':(%d+)$'))
    if k >= cost then
      -- Token j of k ends at e - (k - 1 - j) intervals: take the cost
      -- tokens ending with the first one not past, or the first cost.
      local behind = math.floor((e - from) / interval)
      local first_due = math.max(k - 1 - behind, 0)
      local skip = math.max(first_due - (cost - 1), 0)
      local after = k - skip - cost
      local slot_end = e - after * interval
      local slot_at = slot_end - tolerance
      if slot_at < new_tat - tolerance and slot_at - now <= max_wait then
        redis.call('ZREM', KEYS[2], given[i])
        if skip > 0 then
          local prefix = slot_end - cost * interval
          redis.call('ZADD', KEYS[2], prefix, string.format('%.0f:%d', prefix, skip))
        end
        if after > 0 then
          redis.call('ZADD', KEYS[2], e, string.format('%.0f:%d', e, after))
        end
        local wait = slot_at - now
        if wait < 0 then
          wait = 0
        end
        return {1, wait, string.format('%.0f', slot_end)}
      end
      -- The earliest with the tokens is not sooner: no later one is.
      break
    end
  end
end
if ahead - tolerance > max_wait then
  return {0, ahead - tolerance, ''}
end
local stored = string.format('%.0f', new_tat)
redis.call('SET', KEYS[1], stored, 'PX', string.format('%.0f', math.ceil(ahead / 1000)))
local wait = ahead - tolerance
if wait < 0 then
  wait = 0
end
return {1, wait, stored}
";

/// Gives up a booking whose caller left before its call. The latest
/// booking (the bucket's TAT is still the one it set) is pulled back out
/// of the TAT, and with it any given-up bookings right behind it. One with
/// later bookings behind it cannot be (they were placed after it): it is
/// kept aside in the given-up set, for a caller that would wait longer
/// ([`GCRA`]), while its time is still to come.
///
/// `KEYS[1]`: the bucket; `KEYS[2]`: its given-up bookings. `ARGV`: the TAT
/// the booking set, its weight (µs), the interval (µs per token).
/// Returns 1 when pulled back, 0 when kept aside or past.
pub(crate) const GCRA_GIVE_BACK: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local tat = redis.call('GET', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[3])
if tat ~= ARGV[1] then
  local e = tonumber(ARGV[1])
  local ttl = redis.call('PTTL', KEYS[1])
  if tat and e and e > now and ttl > 0 then
    local k = math.floor(tonumber(ARGV[2]) / interval + 0.5)
    redis.call('ZADD', KEYS[2], e, string.format('%.0f:%d', e, k))
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  return 0
end
local back = tonumber(tat) - tonumber(ARGV[2])
while true do
  local given = redis.call('ZRANGEBYSCORE', KEYS[2], back, back)
  if #given == 0 then
    break
  end
  redis.call('ZREM', KEYS[2], given[1])
  back = back - interval * tonumber(string.match(given[1], ':(%d+)$'))
end
if back <= now then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  local ttl = string.format('%.0f', math.ceil((back - now) / 1000))
  redis.call('SET', KEYS[1], string.format('%.0f', back), 'PX', ttl)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return 1
";

/// A semaphore with leases: a sorted set of holder ids scored by the
/// moment (ms, server clock) their lease ends. Drops the expired holders,
/// then adds this one if fewer than the limit remain. A holder already
/// there (its acquire asked again after a lost connection) has its permit.
///
/// `KEYS[1]`: the holders. `ARGV`: limit, lease (ms), holder id.
/// Returns `{acquired, holders}`.
pub(crate) const ACQUIRE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local held = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return {1, held}
end
if held >= tonumber(ARGV[1]) then
  return {0, held}
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[3])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, held + 1}
";

/// Extends a holder's lease from now, if it still holds one.
///
/// `KEYS[1]`: the holders. `ARGV`: lease (ms), holder id. Returns 1 when
/// renewed, 0 when the holder was gone (its lease had run out).
pub(crate) const RENEW: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + lease), ARGV[2])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
";

/// Whole tokens in a GCRA bucket now. `KEYS[1]`: the bucket. `ARGV`:
/// interval (µs per token), burst (tokens).
pub(crate) const TOKENS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local free = interval * tonumber(ARGV[2]) - (tat - now)
if free < 0 then
  free = 0
end
return math.floor(free / interval)
";

/// Holders whose lease has not ended. `KEYS[1]`: the holders.
pub(crate) const IN_FLIGHT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
";
