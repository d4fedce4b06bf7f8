/* Entry of the test guest: 64-bit mode, boot_params in RSI (the Linux 64-bit boot protocol). */
    .section .text.start, "ax"
    .code64
    .global _start
_start:
    lea stack_top(%rip), %rsp
    mov %rsi, %rdi
    call guest_main
1:  hlt
    jmp 1b

    .section .bss
    .align 16
stack:
    .space 65536
stack_top:
