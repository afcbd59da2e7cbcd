package disk

import (
	"container/list"
	"io"
	"sync"
)

// Small reads of a disk image (an inode, a directory block, a page of an
// extent tree) would each cost a system call, and on qcow2 a whole cluster:
// one L2 lookup and, for a compressed cluster, one decompression of up to
// 2 MiB. Parsers make thousands of such reads in the same few clusters, so
// Image keeps the most recently read guest clusters (64 KiB units for a raw
// image): reads shorter than a unit are served from whole cached units;
// longer reads go straight to the chain.

// cacheBytes bounds the memory of the cluster cache.
const cacheBytes = 16 << 20

const cacheShards = 16

type clusterCache struct {
	cluster int64
	shards  [cacheShards]cacheShard
}

type cacheShard struct {
	mu   sync.Mutex
	max  int
	m    map[int64]*list.Element
	lru  list.List // of *cacheEntry, most recent first
	free [][]byte  // buffers of evicted clusters, for the next misses
}

type cacheEntry struct {
	idx  int64
	data []byte // the guest cluster (shorter at the end of the disk)
}

func newClusterCache(cluster int) *clusterCache {
	c := &clusterCache{cluster: int64(cluster)}
	per := max(cacheBytes/cluster/cacheShards, 1)
	for i := range c.shards {
		c.shards[i].max = per
		c.shards[i].m = map[int64]*list.Element{}
	}
	return c
}

// copyOut copies cluster idx from byte in on into p, under the shard's
// lock (a buffer is reused once evicted); ok is false on a miss.
func (c *clusterCache) copyOut(idx int64, p []byte, in int64) (n int, ok bool) {
	s := &c.shards[idx%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[idx]
	if !ok {
		return 0, false
	}
	s.lru.MoveToFront(e)
	return copy(p, e.Value.(*cacheEntry).data[in:]), true
}

// buffer returns a buffer of n bytes for a missed cluster: an evicted
// cluster's when the shard has one.
func (c *clusterCache) buffer(idx int64, n int64) []byte {
	s := &c.shards[idx%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := len(s.free); k > 0 && n == c.cluster {
		b := s.free[k-1]
		s.free = s.free[:k-1]
		return b
	}
	return make([]byte, n)
}

// put adds cluster idx; the cache owns data from then on.
func (c *clusterCache) put(idx int64, data []byte) {
	s := &c.shards[idx%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[idx]; ok {
		s.recycle(data, c.cluster)
		return
	}
	s.m[idx] = s.lru.PushFront(&cacheEntry{idx: idx, data: data})
	for s.lru.Len() > s.max {
		old := s.lru.Back()
		s.lru.Remove(old)
		e := old.Value.(*cacheEntry)
		delete(s.m, e.idx)
		s.recycle(e.data, c.cluster)
	}
}

func (s *cacheShard) recycle(b []byte, cluster int64) {
	if int64(len(b)) == cluster && len(s.free) < 4 {
		s.free = append(s.free, b)
	}
}

// cachedReadAt serves a read shorter than a cluster from whole clusters,
// reading a missing cluster once through the chain. Cached data is never
// modified while cached (images are read-only); the buffer of an evicted
// cluster is reused, so data is copied out under the shard's lock.
func (im *Image) cachedReadAt(p []byte, off int64) (int, error) {
	c := im.cache
	top := im.layers[0]
	size := top.Size()
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= size {
			break
		}
		idx := pos / c.cluster
		in := pos - idx*c.cluster
		if k, ok := c.copyOut(idx, p[n:], in); ok {
			n += k
			continue
		}
		start := idx * c.cluster
		buf := c.buffer(idx, min(c.cluster, size-start))
		if m, err := top.ReadAt(buf, start); m < len(buf) || err != nil {
			// Fall back to the exact read: it reports the error for
			// the bytes asked for, not for the rest of the cluster.
			return top.ReadAt(p, off)
		}
		n += copy(p[n:], buf[in:])
		c.put(idx, buf)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
