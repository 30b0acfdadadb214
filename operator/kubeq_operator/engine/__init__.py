"""What both shells drive: one autoscaler round, the backend interface they implement, the
operator's metrics and the schedule round. Reads and writes Redis; imports no shell."""
