-- The per-IP layer's one command (metering/ip_limit.py): count a request of an address in the
-- current fixed window and read the previous window's count.
-- KEYS[1]  this window's counter, KEYS[2] the previous window's (one hash tag: one slot).
-- ARGV[1]  the counter's lifetime in ms (two windows: it is read as "previous" in the next).
-- Returns  {count in this window, including this request; count of the previous window}.
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return { count, tonumber(redis.call('GET', KEYS[2])) or 0 }
