"""What the book shows: figures (:mod:`.plots`), tables (:mod:`.tables`) and the
introduction's summary of every experiment (:mod:`.glance`), all from stored records."""
