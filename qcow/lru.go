package qcow

import (
	"container/list"
	"sync"
)

// lru is a bounded cache of values made once per key: the first caller of
// get for a missing key fills it while later callers for the same key wait
// for it (no value is made twice while it stays cached), and the
// least recently used values are dropped past max entries. Values are
// shared, never modified. A failed fill is not kept (its waiters get its
// error; the next get tries again).
// Safe for concurrent use.
type lru[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	m   map[K]*list.Element
	l   list.List // of *lruEntry, most recent first
}

type lruEntry[K comparable, V any] struct {
	key   K
	ready chan struct{} // closed once v and err are set
	v     V
	err   error
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, m: map[K]*list.Element{}}
}

func (c *lru[K, V]) get(k K, fill func() (V, error)) (V, error) {
	c.mu.Lock()
	if el, ok := c.m[k]; ok {
		c.l.MoveToFront(el)
		e := el.Value.(*lruEntry[K, V])
		c.mu.Unlock()
		<-e.ready
		return e.v, e.err
	}
	e := &lruEntry[K, V]{key: k, ready: make(chan struct{})}
	c.m[k] = c.l.PushFront(e)
	for c.l.Len() > c.max {
		old := c.l.Back()
		c.l.Remove(old)
		delete(c.m, old.Value.(*lruEntry[K, V]).key)
	}
	c.mu.Unlock()
	e.v, e.err = fill()
	if e.err != nil {
		c.mu.Lock()
		if el, ok := c.m[k]; ok && el.Value == e {
			c.l.Remove(el)
			delete(c.m, k)
		}
		c.mu.Unlock()
	}
	close(e.ready)
	return e.v, e.err
}
