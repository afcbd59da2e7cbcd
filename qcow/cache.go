package qcow

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
	mu  sync.Mutex
	max int
	m   map[int64]*list.Element
	lru list.List // of *cacheEntry, most recent first
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

func (c *clusterCache) get(idx int64) []byte {
	s := &c.shards[idx%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[idx]; ok {
		s.lru.MoveToFront(e)
		return e.Value.(*cacheEntry).data
	}
	return nil
}

func (c *clusterCache) put(idx int64, data []byte) {
	s := &c.shards[idx%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[idx]; ok {
		return
	}
	s.m[idx] = s.lru.PushFront(&cacheEntry{idx: idx, data: data})
	for s.lru.Len() > s.max {
		old := s.lru.Back()
		s.lru.Remove(old)
		delete(s.m, old.Value.(*cacheEntry).idx)
	}
}

// cachedReadAt serves a read shorter than a cluster from whole clusters,
// reading a missing cluster once through the chain. Cached data is never
// modified: images are read-only.
func (im *Image) cachedReadAt(p []byte, off int64) (int, error) {
	c := im.cache
	top := im.layers[0]
	size := top.VirtualSize
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= size {
			break
		}
		idx := pos / c.cluster
		data := c.get(idx)
		if data == nil {
			start := idx * c.cluster
			buf := make([]byte, min(c.cluster, size-start))
			if m, err := top.readAt(buf, start); m < len(buf) || err != nil {
				// Fall back to the exact read: it reports the error for
				// the bytes asked for, not for the rest of the cluster.
				return top.readAt(p, off)
			}
			c.put(idx, buf)
			data = buf
		}
		n += copy(p[n:], data[pos-idx*c.cluster:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
