/* The one lock every HDF5 call in the process holds: the default libhdf5 is
 * not thread-safe, and the loader reads on its own thread. */
#ifndef UNET_HDF5_LOCK_H
#define UNET_HDF5_LOCK_H

void unet_hdf5_lock(void);
void unet_hdf5_unlock(void);

#endif
