"""A damped inverse that counts the vectors it is applied to (tests of the association rule)."""


class Spy:
    """A damped inverse that records how many vectors each product applies it to."""

    def __init__(self, inv):
        self.inv, self.rows = inv, []
        self.cost_per_row = inv.cost_per_row

    def right(self, X, scratch=False, scale=None):
        self.rows.append(X.shape[0])
        return self.inv.right(X, scratch, scale)

    def right_centered(self, h, mean, scale=1.0):
        self.rows.append(h.shape[0])
        return self.inv.right_centered(h, mean, scale)

    def right_columns(self, X, cols):
        self.rows.append(X.shape[0])
        return self.inv.right_columns(X, cols)

    def left(self, X, scratch=False):  # the columns of X, which may come in parts
        self.rows.append(X.shape[1])
        return self.inv.left(X, scratch)
