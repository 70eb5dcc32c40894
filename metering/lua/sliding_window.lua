-- The rate limiter's one round trip: prune, (settle), check and count the sliding windows of one
-- API key atomically. metering/limiter/ explains the algorithm; its in-process backend
-- (metering/limiter/local.py, windows.py) is the same arithmetic in Python, so a change here is a
-- change there too (the tests compare them).
--
-- KEYS[i]  the hash of window i. All windows of one API key share a hash tag: one Cluster slot.
-- ARGV[1]  one string of comma-separated integers (one argument packs much faster than dozens,
--          client side):
--          now_ms, mode (1 check and count, 2 peek, 3 apply the adds only), requests, tokens,
--          then for each window: window_ms, limit, kind (0 requests, 1 tokens), n, and n pairs
--          (at_ms, delta): delta is added to the bucket of at_ms if that bucket is still live,
--          never below 0 (settlement, and a fallback's counts handed back to Redis).
-- Hash     "w" window_ms, "t" total of the live buckets, "o" oldest non-empty bucket,
--          "<bucket index>" count, "-<bucket index>" the latest admission in that bucket (ms
--          from the bucket's start; numeric names and small values keep the listpack small).
--          A bucket is counted until its latest admission is window_ms old: every admission
--          counts for at least the window, and Retry-After is never more than the window.
--          An empty window has no hash.
-- Returns  {allowed, refusing window (1-based, 0 none), retry_after_ms, used_1, reset_1, ...}.

local BUCKETS = 60
local SPAN = BUCKETS + 2 -- live buckets never reach further than this past the oldest

local ARGS = {}
for value in string.gmatch(ARGV[1], '[^,]+') do
  ARGS[#ARGS + 1] = tonumber(value)
end

local now = ARGS[1]
local mode = ARGS[2]
local amounts = { [0] = ARGS[3], [1] = ARGS[4] }

local function field(index)
  return string.format('%d', index)
end

local function count(win, index)
  return tonumber(redis.call('HGET', win.key, field(index))) or 0
end

local function lfield(index)
  return '-' .. field(index)
end

-- The latest admission counted in a bucket (a hash written before these were kept: its end),
-- remembered for the rest of the call (`win.lasts`: read once, kept current by the writes).
local function last(win, index)
  local known = win.lasts[index]
  if known then
    return known
  end
  local offset = tonumber(redis.call('HGET', win.key, lfield(index))) or (win.width - 1)
  win.lasts[index] = index * win.width + offset
  return win.lasts[index]
end

local function drop(win, index)
  redis.call('HDEL', win.key, field(index), lfield(index))
  win.lasts[index] = nil
end

local function clear(win)
  redis.call('DEL', win.key)
  win.t, win.o, win.cur, win.dirty = 0, nil, 0, false
end

-- Move o up to the oldest non-empty bucket: o only moves forward, so this is amortized O(1).
local function advance(win)
  if win.t <= 0 then
    clear(win)
    return
  end
  while count(win, win.o) <= 0 do
    drop(win, win.o)
    win.o = win.o + 1
    win.dirty = true
    if win.o > win.c + SPAN then -- a total without buckets cannot happen; start over if it does
      clear(win)
      return
    end
  end
end

-- The window at `now`: buckets older than the cutoff dropped, from the oldest up. One HMGET
-- reads the fields and the current bucket; the oldest bucket is non-empty after every call, so
-- it is looked at again only when the cutoff passed it.
local function load(key, window_ms, limit, kind)
  local width = math.ceil(window_ms / BUCKETS)
  local win = {
    key = key, window_ms = window_ms, width = width, limit = limit, kind = kind,
    c = math.floor((now - window_ms) / width), n = math.floor(now / width),
    t = 0, o = nil, cur = 0, dirty = false, bumped = false, expire = false, lasts = {},
  }
  -- With the cutoff bucket's latest admission: under steady use it is the oldest bucket.
  local meta = redis.call('HMGET', key, 'w', 'o', 't', field(win.n), lfield(win.c))
  local w, o, t = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
  if w ~= window_ms or not o or not t or t <= 0 or win.c - o > SPAN then
    -- empty, idle for longer than the window, or written for another window length
    if meta[1] or meta[2] or meta[3] or meta[4] then
      redis.call('DEL', key)
    end
    return win
  end
  win.o, win.t, win.cur = o, t, tonumber(meta[4]) or 0
  win.lasts[win.c] = win.c * width + (tonumber(meta[5]) or (width - 1))
  if win.o < win.c then
    while win.o < win.c do
      local old = redis.call('HGET', key, field(win.o))
      if old then
        win.t = win.t - tonumber(old)
      end
      drop(win, win.o)
      win.o = win.o + 1
    end
    win.dirty = true
    advance(win)
  end
  -- The cutoff bucket straddles now - window_ms: it leaves with its latest admission.
  if win.o == win.c and win.t > 0 and last(win, win.c) <= now - window_ms then
    win.t = win.t - count(win, win.c)
    drop(win, win.c)
    win.o = win.o + 1
    win.dirty = true
    advance(win)
  end
  return win
end

local function add(win, at_ms, delta)
  local index = math.floor(at_ms / win.width)
  -- aged out: what it held has left the window already
  if delta == 0 or index < win.c or (index == win.c and win.o ~= win.c and at_ms <= now - win.window_ms) then
    return
  end
  local old = index == win.n and win.cur or count(win, index)
  local new = math.max(0, old + delta)
  if new == old then
    return
  end
  if new == 0 then
    drop(win, index)
  else
    redis.call('HSET', win.key, field(index), new)
    local latest = old > 0 and last(win, index) or nil
    if delta > 0 and (not latest or at_ms > latest) then
      redis.call('HSET', win.key, lfield(index), at_ms - index * win.width)
      win.lasts[index] = at_ms
    end
  end
  if index == win.n then
    win.cur = new
  end
  win.t = win.t + new - old
  if new > 0 and (not win.o or index < win.o) then
    win.o = index
  end
  win.expire = win.expire or old == 0
  win.dirty = true
  advance(win)
end

-- ms until enough of the oldest buckets have aged out for `amount` more to fit: at most the
-- window, since whatever is counted was admitted by now.
local function retry_after(win, amount)
  if amount > win.limit then -- can never fit: until all that is counted now has left
    return win.window_ms
  end
  local need = win.t + amount - win.limit
  local indexes = {}
  for index = win.o, win.c + SPAN do
    indexes[#indexes + 1] = field(index)
  end
  local counts = redis.call('HMGET', win.key, unpack(indexes))
  local freed = 0
  for i, value in ipairs(counts) do
    freed = freed + (tonumber(value) or 0)
    if freed >= need then
      return last(win, win.o + i - 1) + win.window_ms - now
    end
  end
  return win.window_ms
end

local windows = {}
local pos = 5
for i, key in ipairs(KEYS) do
  local win = load(key, ARGS[pos], ARGS[pos + 1], ARGS[pos + 2])
  local adds = ARGS[pos + 3]
  pos = pos + 4
  for _ = 1, adds do
    add(win, ARGS[pos], ARGS[pos + 1])
    pos = pos + 2
  end
  windows[i] = win
end

local allowed = 1
for _, win in ipairs(windows) do
  if win.t + amounts[win.kind] > win.limit then
    allowed = 0
  end
end

local refused, retry = 0, 0
if mode == 1 and allowed == 1 then
  for _, win in ipairs(windows) do
    local amount = amounts[win.kind]
    if amount > 0 then
      win.expire = win.expire or win.cur == 0
      win.cur = win.cur + amount
      win.bumped = true
      win.t = win.t + amount
      if not win.o or win.n < win.o then
        win.o = win.n
      end
      win.dirty = true
    end
  end
elseif mode == 1 then
  for i, win in ipairs(windows) do
    local amount = amounts[win.kind]
    if win.t + amount > win.limit then
      local wait = retry_after(win, amount)
      if wait > retry then
        refused, retry = i, wait
      end
    end
  end
end

local result = { allowed, refused, retry }
for _, win in ipairs(windows) do
  if win.dirty then
    if win.bumped then
      redis.call('HSET', win.key, field(win.n), win.cur, lfield(win.n), now - win.n * win.width,
        'w', win.window_ms, 'o', field(win.o), 't', win.t)
      win.lasts[win.n] = now
    else
      redis.call('HSET', win.key, 'w', win.window_ms, 'o', field(win.o), 't', win.t)
    end
    -- A new bucket: the hash must live until it ages out. Otherwise the expiry set when the
    -- newest bucket was created already reaches past every bucket.
    if win.expire then
      redis.call('PEXPIRE', win.key, win.window_ms + win.width)
    end
  end
  result[#result + 1] = win.t
  if win.t > 0 then
    result[#result + 1] = last(win, win.o) + win.window_ms - now
  else
    result[#result + 1] = 0
  end
end
return result
