/* list.h - the one intrusive doubly linked list of the project.
 *
 * A head is an mp_link pointing at itself when empty; an element embeds an
 * mp_link and is found again from it with MP_CONTAINER. Nothing here
 * allocates. Removing unlinks the element and leaves it pointing at itself,
 * so that removing twice is harmless (an owner may drop an element from a
 * list without knowing whether an earlier path already did). */
#ifndef MP_LIST_H
#define MP_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct mp_link {
    struct mp_link *prev;
    struct mp_link *next;
} mp_link;

#define MP_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void mp_list_init(mp_link *head) {
    head->prev = head->next = head;
}
static inline bool mp_list_empty(const mp_link *head) {
    return head->next == head;
}
static inline void mp_list_push(mp_link *head, mp_link *l) {
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}
/* Unlinks l and leaves it pointing at itself, so removing twice is harmless. */
static inline void mp_list_remove(mp_link *l) {
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

#endif
