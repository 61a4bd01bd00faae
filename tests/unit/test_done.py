"""Done (mistryd/done.py): an Event whose setting also calls its listeners, once each."""

import threading

from mistryd.done import Done


def test_listeners_are_called_once_when_set_and_at_once_when_set_already():
    done, calls = Done(), []
    done.listen(lambda: calls.append("a"))
    stop = done.listen(lambda: calls.append("b"))
    stop()  # stopped listening: never called
    assert calls == [] and not done.is_set()
    done.set()
    done.set()
    assert calls == ["a"] and done.is_set() and done.wait(0)
    done.listen(lambda: calls.append("late"))
    assert calls == ["a", "late"]


def test_a_waiter_wakes_for_whichever_of_two_comes_first():
    build_done, client_gone = Done(), Done()
    woken = threading.Event()
    build_done.listen(woken.set)
    client_gone.listen(woken.set)
    waiter = threading.Thread(target=woken.wait, args=(10,))
    waiter.start()
    client_gone.set()
    waiter.join(5)
    assert not waiter.is_alive() and not build_done.is_set()
