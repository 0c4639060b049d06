/* zlib (Debian zlib1g-dev): inflate for the deflated members of .npz archives. */
#include <zlib.h>
