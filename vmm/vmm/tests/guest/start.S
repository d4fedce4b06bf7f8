/* Entry of the test guest: 64-bit mode, boot_params in RSI (the Linux 64-bit boot protocol),
 * also kept in boot_params_addr for code that has no argument to receive it. */
    .section .text.start, "ax"
    .code64
    .global _start
_start:
    lea stack_top(%rip), %rsp
    mov %rsi, boot_params_addr(%rip)
    mov %rsi, %rdi
    call guest_main
1:  hlt
    jmp 1b

    .section .bss
    .align 16
    .global boot_params_addr
boot_params_addr:
    .space 16
stack:
    .space 65536
stack_top:
