/*
 * bcryptprimitives.dll for Debian bookworm's wine 8, which lacks it: Rust's standard
 * library (1.78+) takes its random numbers from ProcessPrng there, so without this DLL
 * every Rust .exe fails to start under that wine (status c0000135). The one function
 * forwards to RtlGenRandom (advapi32's SystemFunction036), which wine has. Placed beside
 * the .exe by run.sh; never shipped to Windows, which has the real DLL.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
